"""Teachers for ensemble distillation: lsr's own retrievers, scoring queries against every document exactly.

A teacher holds a corpus encoding (BM25 impacts, SPLADE vectors, dense vectors or token vectors)
and answers :meth:`Teacher.scores` with the exact score of each query against *every*
document, as a ``float32 (n_queries, n_docs)`` array. The candidate lists and the per-candidate
scores the training data needs are both read from these rows, so a document another teacher
retrieved is scored by this teacher from its stored vector, not left out.

Teachers come from a spec string, as ``lsr train --teachers`` takes it::

    bm25,splade=../shared/models/splade-tiny,dense=../shared/models/all-MiniLM-L6-v2,maxsim=MODEL

Corpus encodings are cached: SPLADE and BM25 vectors in ``<cache>/train/encodings/`` (keyed by
the teacher's settings and the corpus fingerprint), dense and token vectors in the embedding
cache of their encoders (``<cache>``, shared with ``lsr eval --embedding-cache``). The
encoders are built on first use, so a run whose teacher scores are all cached loads no model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["TEACHERS", "Teacher", "BM25Teacher", "SpladeTeacher", "DenseTeacher", "MaxSimTeacher",
           "parse_teachers", "make_teachers", "ROW_FLOATS", "LABELS"]

#: largest (queries x documents) block of scores computed at once (64 MB of float32)
ROW_FLOATS = 1 << 24


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _model_id(model: str | os.PathLike) -> str:
    """A local model directory by its resolved path (the same directory named two ways is one model)."""
    p = Path(model)
    return str(p.resolve()) if p.exists() else str(model)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _sparse_dot(queries: SparseBatch, docs_t: Any) -> np.ndarray:
    """``queries @ docs.T`` as a dense float32 array (``docs_t``: the documents' CSC transpose)."""
    return np.asarray((queries.to_scipy() @ docs_t).toarray(), dtype=np.float32)


class Teacher:
    """One teacher over one corpus. Subclasses implement ``_encode_corpus`` and ``_scores``."""

    name: str = "teacher"

    def __init__(self, model: str | None, texts: Sequence[str], fingerprint: str, cache: str | os.PathLike | None,
                 show_progress: bool = False) -> None:
        self.model = model
        self.texts = texts
        self.fingerprint = fingerprint
        self.cache = None if cache is None else Path(cache)
        self.show_progress = show_progress
        self._ready = False

    def settings(self) -> dict[str, Any]:
        """What decides this teacher's scores (its cache key, with the corpus fingerprint)."""
        return {"teacher": self.name, "model": None if self.model is None else _model_id(self.model)}

    @property
    def key(self) -> str:
        return _digest([self.settings(), self.fingerprint])

    def __repr__(self) -> str:
        return self.name if self.model is None else f"{self.name}={self.model}"

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Exact scores of ``queries`` against every document: ``float32 (len(queries), n_docs)``.
        Blank queries score 0 everywhere; documents without vectors score the row's minimum."""
        if not self._ready:
            self._encode_corpus()
            self._ready = True
        out = np.zeros((len(queries), len(self.texts)), dtype=np.float32)
        live = [i for i, q in enumerate(queries) if str(q).strip()]
        step = max(1, ROW_FLOATS // max(1, len(self.texts)))
        for s in range(0, len(live), step):
            rows = live[s:s + step]
            out[rows] = self._scores([queries[i] for i in rows])
        bad = ~np.isfinite(out)
        if bad.any():
            fill = np.where(np.isfinite(out), out, np.inf).min(axis=1, keepdims=True)
            out = np.where(bad, np.where(np.isfinite(fill), fill, 0.0), out).astype(np.float32)
        return out

    def _encode_corpus(self) -> None:
        raise NotImplementedError

    def _scores(self, queries: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _encoding_file(self) -> Path | None:
        return None if self.cache is None else self.cache / "train" / "encodings" / f"{self.key}.npz"

    def _cached_sparse(self, compute: Any) -> SparseBatch:
        """The corpus' sparse vectors from the encoding cache, or ``compute()`` and store them."""
        file = self._encoding_file()
        if file is not None and file.is_file():
            logger.info("%r: corpus encoding from %s", self, file)
            with np.load(file, allow_pickle=False) as z:
                return SparseBatch(z["indptr"], z["indices"], z["data"], int(z["vocab_size"]))
        batch = compute()
        if file is not None:
            _save_npz(file, indptr=batch.indptr, indices=batch.indices, data=batch.data,
                      vocab_size=np.int64(batch.vocab_size))
        return batch


class BM25Teacher(Teacher):
    """BM25 (lsr's defaults, k1=0.9, b=0.4): query term counts times document impacts."""

    name = "bm25"

    def __init__(self, *args: Any, k1: float = 0.9, b: float = 0.4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.k1, self.b = k1, b

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "k1": self.k1, "b": self.b}

    def _encode_corpus(self) -> None:
        from lsr.encoders.bm25 import BM25Encoder

        # fitting is what makes the query side (vocabulary, statistics); it takes seconds
        self.encoder = BM25Encoder(k1=self.k1, b=self.b)
        self._docs_t = self.encoder.fit_documents(list(self.texts)).to_scipy().T.tocsr()

    def _scores(self, queries: list[str]) -> np.ndarray:
        return _sparse_dot(self.encoder.encode_queries(queries), self._docs_t)


class SpladeTeacher(Teacher):
    """SPLADE (documents 256 tokens, queries 64, as ``lsr eval -r splade``); ``doc_vectors``: an
    ``lsr encode`` shards directory of this corpus to take the document vectors from."""

    name = "splade"

    def __init__(self, *args: Any, doc_vectors: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("the splade teacher needs a model: splade=MODEL_DIR")
        from lsr.retrievers.options import SpladeOptions

        self.options = SpladeOptions(model=self.model)
        self.doc_vectors = doc_vectors
        self._encoder: Any = None

    def settings(self) -> dict[str, Any]:
        opts = self.options
        return {**super().settings(), "doc_max_length": opts.doc_max_length,
                "query_max_length": opts.query_max_length, "top_k": opts.top_k, "min_weight": opts.min_weight}

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from lsr.encoders.splade import SpladeEncoder

            self._encoder = SpladeEncoder(self.model, **self.options.encoder_args())
        return self._encoder

    def _from_shards(self) -> SparseBatch:
        from lsr.errors import IndexFormatError
        from lsr.io.shards import load_shards, read_progress

        progress = read_progress(self.doc_vectors)
        if progress.get("fingerprint") != self.fingerprint:
            raise IndexFormatError(f"{self.doc_vectors}: encoded from another corpus (fingerprint differs)")
        saved = progress.get("encoder", {})
        for key in ("doc_max_length", "top_k", "min_weight"):
            if saved.get(key) != getattr(self.options, key):
                raise IndexFormatError(f"{self.doc_vectors}: encoded with {key}={saved.get(key)!r}, "
                                       f"the splade teacher uses {getattr(self.options, key)!r}")
        if _model_id(saved.get("model", "")) != _model_id(self.model):
            raise IndexFormatError(f"{self.doc_vectors}: encoded by {saved.get('model')}, not {self.model}")
        _, vectors = load_shards(self.doc_vectors)  # same fingerprint: same ids, same order
        logger.info("%r: document vectors from %s", self, self.doc_vectors)
        return vectors

    def _encode_corpus(self) -> None:
        from lsr.retrievers.sparse import _blank_rows_emptied

        def compute() -> SparseBatch:
            if self.doc_vectors is not None:
                return self._from_shards()
            return self.encoder.encode_documents(list(self.texts), show_progress=self.show_progress)

        docs = _blank_rows_emptied(self._cached_sparse(compute), self.texts)
        self._docs_t = docs.to_scipy().T.tocsr()

    def _scores(self, queries: list[str]) -> np.ndarray:
        return _sparse_dot(self.encoder.encode_queries(queries), self._docs_t)


class DenseTeacher(Teacher):
    """A bi-encoder's inner products (``lsr eval -r dense``'s settings and embedding cache)."""

    name = "dense"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError(f"the {self.name} teacher needs a model: {self.name}=MODEL_DIR")

    def _options(self) -> Any:
        from lsr.retrievers.options import DenseOptions

        return DenseOptions(model=self.model, embedding_cache=None if self.cache is None else str(self.cache))

    def _make_encoder(self) -> Any:
        from lsr.encoders.embedding import DenseEncoder

        return DenseEncoder(self.model, **self._options().encoder_args())

    def _encode_corpus(self) -> None:
        self.encoder = self._make_encoder()
        self._docs = np.asarray(self.encoder.encode_documents(list(self.texts), show_progress=self.show_progress),
                                dtype=np.float32)

    def _scores(self, queries: list[str]) -> np.ndarray:
        q = np.asarray(self.encoder.encode_queries(queries), dtype=np.float32)
        return q @ self._docs.T


class MaxSimTeacher(DenseTeacher):
    """Exact MaxSim over token vectors (``lsr eval -r maxsim``'s settings and embedding cache)."""

    name = "maxsim"

    def _options(self) -> Any:
        from lsr.retrievers.options import MaxSimOptions

        return MaxSimOptions(model=self.model, embedding_cache=None if self.cache is None else str(self.cache))

    def _make_encoder(self) -> Any:
        from lsr.encoders.multivector import MultiVectorEncoder

        return MultiVectorEncoder(self.model, **self._options().encoder_args())

    def _encode_corpus(self) -> None:
        self.encoder = self._make_encoder()
        self._docs = self.encoder.encode_documents(list(self.texts), show_progress=self.show_progress)

    def _scores(self, queries: list[str]) -> np.ndarray:
        from lsr.index.maxsim import maxsim_scores

        return maxsim_scores(self.encoder.encode_queries(queries), self._docs)


TEACHERS: dict[str, type[Teacher]] = {"bm25": BM25Teacher, "splade": SpladeTeacher, "dense": DenseTeacher,
                                      "maxsim": MaxSimTeacher}
#: the qrels as one more teacher: 1 on a query's labelled positives, 0 on its other candidates
#: (supervised training only; :meth:`lsr.train.data.CandidateSet.with_labels`)
LABELS = "labels"


def parse_teachers(spec: str) -> list[tuple[str, str | None, float]]:
    """``"bm25,splade=DIR,dense=DIR@2"`` -> ``[(name, model or None, weight), ...]``.

    A weight follows the model after ``@`` (``dense=DIR@2``; ``bm25@0.5``); the default is 1.

    >>> parse_teachers("bm25,splade=models/splade-tiny@2")
    [('bm25', None, 1.0), ('splade', 'models/splade-tiny', 2.0)]
    """
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            raise ValueError(f"empty teacher in {spec!r}")
        body, _, weight = item.partition("@")
        name, _, model = body.partition("=")
        name = name.strip()
        if name not in TEACHERS and name != LABELS:
            raise ValueError(f"unknown teacher {name!r} in {spec!r}; choose from {', '.join([*TEACHERS, LABELS])}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"teacher weight {weight!r} is not a number (in {item!r})") from None
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"teacher weight must be a finite number >= 0, got {weight!r}")
        if name not in ("bm25", LABELS) and not model:
            raise ValueError(f"teacher {name!r} needs a model: {name}=MODEL_DIR")
        if name == LABELS and model:
            raise ValueError(f"the {LABELS} teacher takes no model (in {item!r})")
        out.append((name, model or None, w))
    if not out:
        raise ValueError("no teachers given")
    if len({(n, m) for n, m, _ in out}) != len(out):
        raise ValueError(f"a teacher is named twice in {spec!r}")
    if sum(w for *_, w in out) <= 0:
        raise ValueError("teacher weights sum to 0")
    if all(n == LABELS for n, *_ in out):
        raise ValueError(f"the {LABELS} teacher needs at least one retriever teacher beside it (they give the candidates)")
    return out


def make_teachers(spec: str | Sequence[tuple[str, str | None, float]], texts: Sequence[str], fingerprint: str,
                  cache: str | os.PathLike | None, doc_vectors: str | os.PathLike | None = None,
                  show_progress: bool = False) -> tuple[list[Teacher], list[float]]:
    """The teachers of ``spec`` over the corpus ``texts`` and their weights (``doc_vectors``: the
    splade teacher's pre-encoded documents, from ``lsr encode``)."""
    items = [t for t in (parse_teachers(spec) if isinstance(spec, str) else list(spec)) if t[0] != LABELS]
    teachers: list[Teacher] = []
    for name, model, _ in items:
        extra = {"doc_vectors": doc_vectors} if name == "splade" else {}
        teachers.append(TEACHERS[name](model, texts, fingerprint, cache, show_progress=show_progress, **extra))
    return teachers, [float(w) for *_, w in items]
