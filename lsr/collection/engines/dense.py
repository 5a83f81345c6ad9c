"""Dense engine: float32 document vectors per segment, plus the FAISS index the options ask for.

A segment holds ``vectors.npy`` (float32, ``(n_docs, dim)``, the encoder's output as a fresh
``DenseRetriever`` indexes it) and, for ``index_type`` hnsw / ivf / ivfpq on segments of at
least :data:`APPROXIMATE_MIN_DOCS` documents, ``faiss/`` (a :class:`~lsr.index.dense.DenseIndex`
directory). Search per segment:

* exact (flat and small segments, and approximate ones where at most :data:`EXACT_ALLOWED_BELOW`
  of the documents are live and allowed): float32 inner products with the stored vectors of the
  allowed documents, exact top ``k`` (every allowed document has a score, so ``k`` results
  whenever ``k`` documents are allowed). The products come from a compiled kernel whose score of
  a (query, document) pair does not depend on where the document is stored
  (:mod:`lsr.collection._dense_kernels`): equal vectors score equally and rank by position, in
  one collection, across its segments and across the shards of a sharded one;
* approximate (an hnsw / ivf / ivfpq index): FAISS, as a fresh approximate build would search
  it; with deletes or a filter, restricted to the live and allowed documents by
  :meth:`~lsr.index.dense.DenseIndex.search`'s ``allowed`` mask (FAISS selectors, re-answered
  exactly for a query left with fewer than ``k``).

A merge concatenates the kept rows of the stored vectors and rebuilds the FAISS index from them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.collection.engines.base import (
    Engine,
    Hits,
    check_n_docs,
    check_search,
    given_query_vectors,
    merge_hits,
    parts_mask,
    top_k_rows,
)
from lsr.errors import IndexFormatError
from lsr.io.manifest import load_array, read_manifest, save_array, write_manifest
from lsr.retrievers.base import as_queries
from lsr.retrievers.options import DenseOptions

logger = logging.getLogger(__name__)

__all__ = ["DenseEngine", "DensePart", "APPROXIMATE_MIN_DOCS"]

FORMAT, VERSION = "lsr.segment.dense", 1
#: below this many documents a segment is searched exactly (an approximate index would not be faster)
APPROXIMATE_MIN_DOCS = 4096
#: an approximate segment with at most this share of its documents live and allowed is searched
#: exactly (a matrix product over few rows beats a graph walk that skips most of its nodes)
EXACT_ALLOWED_BELOW = 0.25
#: document rows scored per matrix product in exact search (bounds the score buffer)
EXACT_BLOCK = 65536


class DensePart:
    """One segment: its vectors (memory-mapped) and, if built, its approximate FAISS index."""

    def __init__(self, directory: Path, vectors: np.ndarray, faiss_index: Any = None) -> None:
        self.directory = Path(directory)
        self.vectors = vectors
        self.faiss = faiss_index
        self.n_docs = int(vectors.shape[0])


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, mask: np.ndarray | None, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products among the rows ``mask`` allows, ties to the lower position."""
    nq = queries.shape[0]
    rows = np.arange(vectors.shape[0]) if mask is None else np.flatnonzero(mask)
    k = min(k, vectors.shape[0])
    best_ids = np.full((nq, 0), -1, np.int64)
    best_scores = np.zeros((nq, 0), np.float32)
    from lsr.collection._dense_kernels import inner_products

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    stored = np.asarray(vectors)
    if stored.dtype != np.float32 or not stored.flags.c_contiguous:
        stored = np.ascontiguousarray(stored, dtype=np.float32)
    for a in range(0, rows.size, EXACT_BLOCK):
        block = rows[a:a + EXACT_BLOCK]
        scores = np.empty((nq, block.size), np.float32)
        inner_products(queries, stored, block.astype(np.int64, copy=False), scores)  # layout-independent scores
        ids, sc = top_k_rows(scores, None, k)
        ids = np.where(ids >= 0, block[np.maximum(ids, 0)], -1)
        if best_ids.shape[1]:  # merge with the earlier blocks (positions ascend block by block)
            merged_ids, merged_sc = np.concatenate([best_ids, ids], 1), np.concatenate([best_scores, sc], 1)
            order = np.lexsort((np.where(merged_ids >= 0, merged_ids, np.iinfo(np.int64).max),
                                np.where(merged_ids >= 0, -merged_sc, np.inf)), axis=-1)[:, :k]
            ids, sc = np.take_along_axis(merged_ids, order, 1), np.take_along_axis(merged_sc, order, 1)
        best_ids, best_scores = ids, sc
    out_ids = np.full((nq, k), -1, np.int64)
    out_scores = np.zeros((nq, k), np.float32)
    out_ids[:, :best_ids.shape[1]], out_scores[:, :best_ids.shape[1]] = best_ids, best_scores
    return out_ids, np.where(out_ids >= 0, out_scores, 0).astype(np.float32)


class DenseEngine(Engine):
    """A bi-encoder (:class:`DenseOptions`) over per-segment vectors."""

    name = "dense"
    options_class = DenseOptions

    def __init__(self, options: DenseOptions) -> None:
        super().__init__(options)
        from lsr.retrievers.bi_encoder import DenseRetriever

        self.encoder = DenseRetriever.from_options(options).encoder

    def state(self) -> dict[str, Any]:
        cfg = self.encoder.config()
        return {"encoder": {k: cfg.get(k) for k in ("type", "model", "pooling", "normalize", "document_prefix",
                                                     "doc_max_length", "dim")},
                "index_type": self.options.index_type}

    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        vectors = self.encoder.encode_documents(list(texts), show_progress=show_progress)
        self._write(Path(directory), np.asarray(vectors, np.float32).reshape(len(texts), self.encoder.dim))

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        return np.ascontiguousarray(self.encoder.encode_queries(list(queries)), dtype=np.float32)

    def check_encoded(self, vectors: Any) -> None:
        from lsr.collection.encoded import check_vectors

        check_vectors(vectors, "dense", self.encoder.dim, self.encoder.config(),
                      ("model", "pooling", "normalize", "document_prefix", "doc_max_length"), self.name)

    def write_encoded(self, encoded: Any, texts: Sequence[str], directory: Path) -> None:
        vectors = np.asarray(encoded, np.float32)
        if vectors.shape != (len(texts), self.encoder.dim):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(texts)} documents of dimension "
                             f"{self.encoder.dim}")
        self._write(Path(directory), vectors)

    def merge_segments(self, parts: Sequence[tuple[DensePart, np.ndarray]], directory: Path) -> None:
        keeps = parts_mask(parts)
        rows = [np.asarray(part.vectors[keep], np.float32) for (part, _), keep in zip(parts, keeps)]
        self._write(Path(directory), np.concatenate(rows) if rows else np.zeros((0, self.encoder.dim), np.float32))

    def _write(self, directory: Path, vectors: np.ndarray) -> None:
        if vectors.size and not np.isfinite(vectors).all():
            raise ValueError("document vectors must be finite (found NaN or inf)")
        save_array(directory, "vectors.npy", vectors)
        approximate = self.options.index_type != "flat" and vectors.shape[0] >= APPROXIMATE_MIN_DOCS
        if approximate:
            from lsr.index.dense import DenseIndex

            (directory / "faiss").mkdir()
            DenseIndex.build(vectors, index_type=self.options.index_type, use_gpu=False)._write(directory / "faiss")
        write_manifest(directory, FORMAT, VERSION, {"n_docs": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
                                                    "index_type": self.options.index_type,
                                                    "approximate": approximate})

    def open_segment(self, directory: Path, n_docs: int) -> DensePart:
        directory = Path(directory)
        m = read_manifest(directory, FORMAT, VERSION, verify=False)  # sizes; the segment manifest has the hashes
        try:
            n, dim, approximate = int(m["n_docs"]), int(m["dim"]), bool(m["approximate"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{directory}/manifest.json: missing or bad field ({exc})") from exc
        check_n_docs(directory, n, n_docs)
        if dim != self.encoder.dim:
            raise IndexFormatError(f"{directory}/manifest.json: dim {dim}, the encoder gives {self.encoder.dim}")
        vectors = load_array(directory, "vectors.npy", np.float32, (n, dim))
        if vectors.size and not np.isfinite(vectors).all():
            raise IndexFormatError(f"{directory}/vectors.npy: NaN or inf in the stored vectors")
        index = None
        if approximate:
            from lsr.index.dense import DenseIndex

            index = DenseIndex.load(directory / "faiss", mmap=True, verify=False)
            if len(index) != n or index.dim != dim:
                raise IndexFormatError(f"{directory}/faiss: {len(index)} x {index.dim}, expected {n} x {dim}")
        return DensePart(directory, vectors, index)

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[DensePart, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        given = given_query_vectors(search_options, len(as_queries(queries)), lambda v: np.shape(v)[0])
        queries, k, masks = check_search(queries, k, segments, allowed, search_options, self.name)
        if not segments or not queries:
            return merge_hits([], len(queries), k)
        q = self.query_vectors(queries) if given is None else np.ascontiguousarray(given, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.encoder.dim:
            raise ValueError(f"query_vectors: shape {q.shape}, the encoder's dimension is {self.encoder.dim}")
        if given is not None and not np.isfinite(q).all():
            raise ValueError("query_vectors: not finite (NaN or inf)")
        per_segment = []
        for (part, _), mask in zip(segments, masks):
            if part.faiss is not None and (mask is None or mask.mean() > EXACT_ALLOWED_BELOW):
                res = part.faiss.search(q, k=min(k, part.n_docs), threads=threads, allowed=mask)
                per_segment.append((res.ids, res.scores))
            else:  # exact over the allowed rows
                per_segment.append(exact_top_k(q, part.vectors, mask, k))
        return merge_hits(per_segment, len(queries), k)
