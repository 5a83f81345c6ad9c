"""Dense and multi-vector retrievers: DenseRetriever, MaxSimRetriever, MuveraRetriever.

* ``dense``: :class:`~lsr.encoders.dense.DenseEncoder` + :class:`~lsr.index.dense.DenseIndex`.
* ``maxsim``: :class:`~lsr.encoders.multivector.MultiVectorEncoder` + exact brute-force MaxSim
  over the float16 multi-vector store (the reference the FDE index approximates).
* ``muvera``: the same encoder + :class:`~lsr.index.muvera.FDEIndex` (FDE candidates re-ranked
  by exact MaxSim).

Saved retrievers reference the model (path or hub id) in ``encoder/encoder.json``; the index
files sit beside it. ``cache_dir`` (CLI ``--embedding-cache``) stores encodings by content hash.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.hybrid.base import Retriever, SearchResults
from lsr.index._format import load_ids, save_ids

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever", "MaxSimRetriever", "MuveraRetriever"]

SEARCH_BATCH = 256  # queries encoded and searched per step (progress granularity)


def _encoder_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    model = options.get("model")
    if not model:
        raise ValueError("this retriever needs --model (a model directory or hub id)")
    kw: dict[str, Any] = {"doc_max_length": options.get("doc_max_length"),
                          "query_max_length": options.get("query_max_length"),
                          "device": options.get("device"), "cache_dir": options.get("embedding_cache")}
    if options.get("batch_size"):
        kw["batch_size"] = int(options["batch_size"])
    return kw


def _empty(k: int, doc_ids: np.ndarray) -> SearchResults:
    return SearchResults(np.empty((0, k), np.int64), np.empty((0, k), np.float32), doc_ids)


def _batched_search(queries: Sequence[str], k: int, show_progress: bool, step: Any,
                    doc_ids: np.ndarray) -> SearchResults:
    from tqdm.auto import tqdm

    ids, scores = [], []
    with tqdm(total=len(queries), desc="search", unit="q", disable=not show_progress) as bar:
        for s in range(0, len(queries), SEARCH_BATCH):
            batch = list(queries[s:s + SEARCH_BATCH])
            i, sc = step(batch)
            ids.append(i)
            scores.append(sc)
            bar.update(len(batch))
    if not ids:
        return _empty(k, doc_ids)
    return SearchResults(np.concatenate(ids), np.concatenate(scores), doc_ids)


def _check_texts(doc_ids: Sequence[str], texts: Sequence[str]) -> None:
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")


# ---------------------------------------------------------------------------- dense
class DenseRetriever(Retriever):
    """Bi-encoder + FAISS. ``index_type``: flat (exact), hnsw, ivf, ivfpq."""

    name = "dense"

    def __init__(self, encoder: Any, index: Any = None, index_type: str = "flat",
                 index_params: dict[str, Any] | None = None) -> None:
        self.encoder = encoder
        self.dense_index = index
        self.index_type = index_type
        self.index_params = dict(index_params or {})

    @classmethod
    def from_options(cls, **options: Any) -> "DenseRetriever":
        from lsr.encoders.dense import DenseEncoder

        kw = _encoder_kwargs(options)
        return cls(DenseEncoder(options["model"], **kw),
                   index_type=options.get("index_type") or "flat")

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        _check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress))

    def index_vectors(self, doc_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index already-encoded document vectors."""
        from lsr.index.dense import DenseIndex

        self.dense_index = DenseIndex.build(vectors, doc_ids=doc_ids, index_type=self.index_type,
                                            metadata={"encoder": self.encoder.config()}, **self.index_params)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        if self.dense_index is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return _batched_search(queries, k, show_progress, lambda b: self.dense_index.search(
            self.encoder.encode_queries(b), k=k, threads=threads), self.dense_index.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.dense_index is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        (directory / "index").mkdir()
        self.dense_index._write(directory / "index")
        return {"encoder": self.encoder.config(), "index_type": self.index_type}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "DenseRetriever":
        from lsr.encoders.dense import DenseEncoder
        from lsr.index.dense import DenseIndex

        index = DenseIndex.load(directory / "index", mmap=mmap, verify=False)
        return cls(DenseEncoder.load(directory / "encoder"), index, index.index_type, index.params)


# ---------------------------------------------------------------------------- multi-vector
class MaxSimRetriever(Retriever):
    """Exact late interaction: brute-force MaxSim over every document's token vectors."""

    name = "maxsim"

    def __init__(self, encoder: Any, docs: Any = None, doc_ids: Sequence[str] | None = None) -> None:
        self.encoder = encoder
        self.docs = docs
        self.doc_ids = None if doc_ids is None else np.asarray([str(d) for d in doc_ids], dtype=object)

    @classmethod
    def _encoder(cls, options: dict[str, Any]) -> Any:
        from lsr.encoders.multivector import MultiVectorEncoder

        kw = _encoder_kwargs(options)
        return MultiVectorEncoder(options["model"], **kw)

    @classmethod
    def from_options(cls, **options: Any) -> "MaxSimRetriever":
        return cls(cls._encoder(options))

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        _check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress))

    def index_vectors(self, doc_ids: Sequence[str], docs: Any) -> None:
        """Use already-encoded document multi-vectors (stored as float16)."""
        from lsr.index.multivectors import MultiVectors

        if len(doc_ids) != len(docs):
            raise ValueError(f"{len(doc_ids)} ids for {len(docs)} documents")
        if len(set(map(str, doc_ids))) != len(doc_ids):
            raise ValueError("duplicate document ids")
        self.docs = MultiVectors(np.asarray(docs.vectors, dtype=np.float16), docs.offsets)
        self.doc_ids = np.asarray([str(d) for d in doc_ids], dtype=object)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        from lsr.index.multivectors import maxsim_search

        if self.docs is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return _batched_search(queries, k, show_progress, lambda b: maxsim_search(
            self.encoder.encode_queries(b), self.docs, k=k), self.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.docs is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        fields = self.docs.save(directory, "multivectors")
        save_ids(directory, "doc_ids.parquet", self.doc_ids)
        return {"encoder": self.encoder.config(), "multivectors": fields}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "MaxSimRetriever":
        from lsr.encoders.multivector import MultiVectorEncoder
        from lsr.index.multivectors import MultiVectors

        docs = MultiVectors.load(directory, config.get("multivectors") or {}, "multivectors", mmap)
        return cls(MultiVectorEncoder.load(directory / "encoder"), docs,
                   load_ids(directory, "doc_ids.parquet", len(docs)))


class MuveraRetriever(Retriever):
    """MUVERA: FDE search (FAISS) for ``candidates`` documents, re-ranked by exact MaxSim."""

    name = "muvera"

    def __init__(self, encoder: Any, index: Any = None, fde: dict[str, Any] | None = None,
                 candidates: int | None = None, index_type: str = "flat") -> None:
        from lsr.index.muvera import DEFAULT_CANDIDATES

        self.encoder = encoder
        self.fde_index = index
        self.fde = dict(fde or {})  # FDEConfig fields; d_proj None = identity projection
        self.candidates = int(candidates or DEFAULT_CANDIDATES)
        self.index_type = index_type

    @classmethod
    def from_options(cls, **options: Any) -> "MuveraRetriever":
        fde = {key: options.get(f"fde_{key}") for key in ("k_sim", "d_proj", "reps", "final_dim")}
        fde = {key: value for key, value in fde.items() if value is not None}  # unset: FDEConfig default
        if fde.get("d_proj") == 0:
            fde["d_proj"] = None  # 0 on the command line = identity projection
        return cls(MaxSimRetriever._encoder(options), fde=fde, candidates=options.get("candidates"),
                   index_type=options.get("index_type") or "flat")

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        _check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress),
                           show_progress=show_progress)

    def index_vectors(self, doc_ids: Sequence[str], docs: Any, show_progress: bool = False) -> None:
        """Build the FDE index from already-encoded document multi-vectors."""
        from lsr.index.muvera import FDEConfig, FDEIndex

        config = FDEConfig(dim=docs.dim, **self.fde)
        self.fde_index = FDEIndex.build(docs, config, doc_ids=doc_ids, candidates=self.candidates,
                                        index_type=self.index_type, show_progress=show_progress)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        if self.fde_index is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return _batched_search(queries, k, show_progress, lambda b: self.fde_index.search(
            self.encoder.encode_queries(b), k=k, threads=threads), self.fde_index.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.fde_index is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        (directory / "index").mkdir()
        self.fde_index._write(directory / "index")
        return {"encoder": self.encoder.config(), "fde": self.fde_index.encoder.config.to_dict(),
                "candidates": self.fde_index.candidates}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "MuveraRetriever":
        from lsr.encoders.multivector import MultiVectorEncoder
        from lsr.index.muvera import FDEIndex

        index = FDEIndex.load(directory / "index", mmap=mmap, verify=False)
        cfg = index.encoder.config.to_dict()
        fde = {k: cfg[k] for k in ("k_sim", "d_proj", "reps", "final_dim", "fill_empty_partitions", "seed")}
        return cls(MultiVectorEncoder.load(directory / "encoder"), index, fde, index.candidates,
                   index.dense.index_type)
