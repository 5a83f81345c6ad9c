"""Training data for ``lsr train``: queries, candidates from a teacher ensemble, fused soft labels.

For each training query the candidates are the union of every teacher's top-``depth`` documents
plus the query's labelled positives (supervised) or its source document (pseudo-queries). Every
teacher scores every candidate exactly (:meth:`lsr.train.teachers.Teacher.scores`); per query and
teacher the scores are min-max normalised over the candidates, and the teachers are combined by
a weighted sum with weights summing to 1 (:func:`fuse`), so the fused label lies in [0, 1].

Two sources of queries:

* :func:`load_split`: a BEIR directory's ``train`` (or ``dev``) split: the queries judged there
  and their positives (grade > 0). ``qrels/test.tsv`` is never opened and only the split's
  query ids are kept from ``queries.jsonl``; asking for the test split is an error.
* :func:`lsr.train.pseudo.pseudo_queries`: queries made from the corpus (corpus adaptation).

Cache (``cache`` directory, ``train/`` below it): each teacher's top-``depth`` lists, keyed by
the teacher (kind, model, settings), the corpus fingerprint, the query set and ``depth``; and
each teacher's scores for the final candidate lists, keyed by the teacher, the corpus and the
candidate lists themselves. A second run with the same settings loads both and encodes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.io.readers import Corpus, read_corpus, read_qrels, read_queries
from lsr.io.shards import corpus_fingerprint
from lsr.train.teachers import LABELS, Teacher

logger = logging.getLogger(__name__)

__all__ = ["CandidateSet", "TrainQueries", "require_labelled", "load_split", "load_corpus", "build_candidates",
           "fuse", "min_max"]

QUERY_BATCH = 256  # queries whose full score rows are computed at once (per teacher)


@dataclass
class TrainQueries:
    """Training queries over a corpus: ids, texts and the corpus positions forced into each
    query's candidates (labelled positives, or a pseudo-query's source document)."""

    ids: list[str]
    texts: list[str]
    forced: list[np.ndarray]
    labelled: bool          # forced documents are labelled positives (supervised) or sources (pseudo)
    description: dict[str, Any]


def require_labelled(queries: TrainQueries) -> None:
    """ValueError unless ``queries`` carry labels (the ``labels`` teacher needs them)."""
    if not queries.labelled:
        raise ValueError(f"the {LABELS} teacher needs labelled queries (--queries train), not pseudo-queries")


@dataclass
class CandidateSet:
    """Candidates of every query and each teacher's raw scores for them (before fusion)."""

    queries: TrainQueries
    corpus: Corpus
    teacher_names: list[str]
    groups: list[np.ndarray]      # per query: int64 corpus positions, ascending
    raw: list[np.ndarray]         # per query: float32 (n_teachers, len(group)) raw teacher scores
    positives: list[np.ndarray]   # per query: bool mask of the forced documents over the group

    def with_labels(self) -> "CandidateSet":
        """These candidates with the qrels as one more (last) teacher: 1 on each labelled positive,
        0 on the other candidates (min-max leaves a query whose candidates are all positive at 0)."""
        require_labelled(self.queries)
        raw = [np.vstack([r, p.astype(np.float32)[None]]) for r, p in zip(self.raw, self.positives)]
        return CandidateSet(self.queries, self.corpus, [*self.teacher_names, LABELS], self.groups, raw,
                            self.positives)

    def fused(self, weights: Sequence[float]) -> list[np.ndarray]:
        return [fuse(r, weights) for r in self.raw]

    def to_training_data(self, weights: Sequence[float]) -> Any:
        """The :class:`~lsr.encoders.sparse_training.TrainingData` of these candidates: only the
        documents some query has among its candidates are kept (``doc_texts``, title + text)."""
        from lsr.encoders.sparse_training import TrainingData

        used = np.unique(np.concatenate(self.groups)) if self.groups else np.zeros(0, np.int64)
        where = np.full(len(self.corpus), -1, dtype=np.int64)
        where[used] = np.arange(used.size)
        return TrainingData(queries=list(self.queries.texts),
                            doc_texts=[self.corpus.contents(int(i)) for i in used],
                            groups=[where[g] for g in self.groups],
                            teacher=self.fused(weights),
                            positives=list(self.positives) if self.queries.labelled else None)

    def stats(self) -> dict[str, Any]:
        sizes = np.array([g.size for g in self.groups])
        return {"n_queries": len(self.groups), "candidates_mean": float(sizes.mean()) if sizes.size else 0.0,
                "candidates_max": int(sizes.max()) if sizes.size else 0,
                "documents": int(np.unique(np.concatenate(self.groups)).size) if self.groups else 0,
                "teachers": list(self.teacher_names)}


# ---------------------------------------------------------------------------- fusion
def min_max(scores: np.ndarray) -> np.ndarray:
    """Min-max normalise each row to [0, 1]; a row whose scores all tie becomes 0 (no preference)."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = s.min(axis=-1, keepdims=True), s.max(axis=-1, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)


def fuse(raw: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of the teachers' min-max normalised scores, weights scaled to sum to 1:
    ``float32 (n_candidates,)`` in [0, 1]."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (raw.shape[0],):
        raise ValueError(f"{w.size} teacher weights for {raw.shape[0]} teachers")
    return (w[:, None] * min_max(raw)).sum(axis=0).astype(np.float32) / np.float32(w.sum())


# ---------------------------------------------------------------------------- queries
def _find(root: Path, name: str) -> Path:
    for p in (root / name, root / f"{name}.gz"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{root}: missing {name} (not a BEIR directory?)")


def load_corpus(path: str | os.PathLike) -> Corpus:
    """The corpus of a BEIR directory (``corpus.jsonl``) or a corpus file (JSONL, ``.jsonl.gz``, Parquet)."""
    path = Path(path)
    return read_corpus(_find(path, "corpus.jsonl") if path.is_dir() else path)


def load_split(dataset: str | os.PathLike, corpus: Corpus, split: str = "train", max_queries: int | None = None,
               seed: int = 13) -> TrainQueries:
    """The queries of BEIR split ``split`` with their positives (grade > 0) as corpus positions.

    Reads only ``qrels/<split>.tsv`` and ``queries.jsonl`` (of which only the split's ids are
    kept); the test split is refused. Queries with no positive in the corpus are dropped
    (counted in a log line). ``max_queries``: a seeded sample of that many queries (in file order)."""
    if split == "test":
        raise ValueError("the test split is never used for training (use train, or dev for model selection)")
    root = Path(dataset)
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise FileNotFoundError(f"{root}: no qrels/{split}.tsv (supervised training needs a train split; "
                                "without one use --queries pseudo)")
    qrels = read_qrels(qrels_file)
    all_queries = read_queries(_find(root, "queries.jsonl"))
    position = {d: i for i, d in enumerate(corpus.ids)}
    ids, texts, forced = [], [], []
    dropped = 0
    for qid, judged in qrels.items():
        if qid not in all_queries:
            raise ValueError(f"{qrels_file}: query {qid!r} is not in queries.jsonl")
        pos = sorted(position[d] for d, g in judged.items() if g > 0 and d in position)
        if not pos or not all_queries[qid].strip():
            dropped += 1
            continue
        ids.append(qid)
        texts.append(all_queries[qid])
        forced.append(np.asarray(pos, dtype=np.int64))
    if dropped:
        logger.info("%s: %d of %d queries have no positive document in the corpus (dropped)",
                    qrels_file, dropped, len(qrels))
    if not ids:
        raise ValueError(f"{qrels_file}: no query with a positive document in the corpus")
    described: dict[str, Any] = {"mode": "train", "split": split, "dataset": root.name}
    if max_queries is not None and max_queries < len(ids):
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_queries, replace=False))
        ids, texts, forced = [ids[i] for i in keep], [texts[i] for i in keep], [forced[i] for i in keep]
        described.update({"max_queries": max_queries, "seed": seed})
    return TrainQueries(ids, texts, forced, True, described)


def pseudo_split(corpus: Corpus, n: int, seed: int = 13) -> TrainQueries:
    """``n`` pseudo-queries from ``corpus`` (:mod:`lsr.train.pseudo`), each forcing its source document."""
    from lsr.train.pseudo import pseudo_queries

    made = pseudo_queries(corpus.ids, corpus.titles, corpus.texts, n, seed=seed)
    return TrainQueries([f"pseudo-{i}" for i in range(len(made))], [q.text for q in made],
                        [np.array([q.source], dtype=np.int64) for q in made], False,
                        {"mode": "pseudo", "n": n, "seed": seed,
                         "kinds": {k: sum(q.kind == k for q in made) for k in ("title", "sentence", "span")}})


# ---------------------------------------------------------------------------- cache
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()[:32]


def _groups_digest(groups: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for g in groups:
        h.update(np.asarray(g, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:32]


def _load(file: Path | None) -> np.ndarray | None:
    if file is None or not file.is_file():
        return None
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        logger.warning("%s unreadable (%s); recomputing", file, exc)
        return None


def _store(file: Path | None, array: np.ndarray) -> None:
    if file is None:
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, file)


# ---------------------------------------------------------------------------- candidates
def _top(rows: np.ndarray, depth: int) -> np.ndarray:
    """Each row's top-``depth`` positions (by score, then by lower position), as int64."""
    depth = min(depth, rows.shape[1])
    order = np.lexsort((np.broadcast_to(np.arange(rows.shape[1]), rows.shape), -rows), axis=1)
    return order[:, :depth].astype(np.int64)


def build_candidates(queries: TrainQueries, corpus: Corpus, teachers: Sequence[Teacher], depth: int = 50,
                     cache: str | os.PathLike | None = None, show_progress: bool = False) -> CandidateSet:
    """Candidates (union of the teachers' top-``depth`` and the forced documents) and every
    teacher's exact score for each, from the cache where it has them."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not teachers:
        raise ValueError("no teachers")
    root = None if cache is None else Path(cache) / "train"
    fp = corpus_fingerprint(corpus.ids, corpus.all_contents())
    qfp = _texts_digest(queries.texts)
    nq = len(queries.texts)
    top_files = [None if root is None else root / "top" / f"{_digest([t.key, fp, qfp, depth])}.npy" for t in teachers]
    tops: list[np.ndarray | None] = [_load(f) for f in top_files]
    rows_needed = [i for i, t in enumerate(tops) if t is None or t.shape[0] != nq]

    def union(b0: int, b1: int) -> list[np.ndarray]:
        return [np.unique(np.concatenate([queries.forced[q]] + [t[q] for t in tops])) for q in range(b0, b1)]

    groups: list[np.ndarray] = []
    raw_parts: dict[int, list[np.ndarray]] = {i: [] for i in range(len(teachers))}
    if rows_needed:  # some top lists are missing: every teacher's rows are computed once, in one pass
        fresh = {i: np.zeros((nq, min(depth, len(corpus))), np.int64) for i in rows_needed}
        bar = _bar(nq, show_progress, "teacher scores")
        for b0 in range(0, nq, QUERY_BATCH):
            b1 = min(nq, b0 + QUERY_BATCH)
            batch = queries.texts[b0:b1]
            rows = [t.scores(batch) for t in teachers]
            for i in rows_needed:
                fresh[i][b0:b1] = _top(rows[i], depth)
            for i in range(len(teachers)):
                if i in fresh:
                    tops[i] = fresh[i]
            part = union(b0, b1)
            groups.extend(part)
            for i in range(len(teachers)):
                raw_parts[i].extend(rows[i][q - b0, g] for q, g in zip(range(b0, b1), part))
            bar.update(b1 - b0)
        bar.close()
        for i in rows_needed:
            _store(top_files[i], fresh[i])
        gfp = _groups_digest(groups)
        for i, t in enumerate(teachers):
            _store(None if root is None else root / "scores" / f"{_digest([t.key, fp, qfp, gfp])}.npy",
                   np.concatenate(raw_parts[i]).astype(np.float32))
        per_teacher = [raw_parts[i] for i in range(len(teachers))]
    else:
        groups = union(0, nq)
        gfp = _groups_digest(groups)
        bounds = np.concatenate([[0], np.cumsum([g.size for g in groups])])
        per_teacher = []
        for t in teachers:
            file = None if root is None else root / "scores" / f"{_digest([t.key, fp, qfp, gfp])}.npy"
            flat = _load(file)
            if flat is None or flat.size != bounds[-1]:
                logger.info("%r: scoring %d candidates", t, int(bounds[-1]))
                parts = []
                for b0 in range(0, nq, QUERY_BATCH):
                    b1 = min(nq, b0 + QUERY_BATCH)
                    rows = t.scores(queries.texts[b0:b1])
                    parts.extend(rows[q - b0, groups[q]] for q in range(b0, b1))
                flat = np.concatenate(parts).astype(np.float32)
                _store(file, flat)
            per_teacher.append([flat[bounds[q]:bounds[q + 1]] for q in range(nq)])
    raw = [np.stack([np.asarray(p[q], np.float32) for p in per_teacher]) for q in range(nq)]
    positives = [np.isin(g, f) for g, f in zip(groups, queries.forced)]
    return CandidateSet(queries, corpus, [repr(t) for t in teachers], groups, raw, positives)


def _bar(total: int, show: bool, desc: str) -> Any:
    if not show:
        class _Quiet:
            def update(self, n: int) -> None: ...
            def close(self) -> None: ...
        return _Quiet()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="q")
