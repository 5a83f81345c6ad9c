"""Learned sparse engines (SPLADE, inference-free): a float32 InvertedIndex per segment.

A learned document vector does not depend on other documents, so a segment is the documents'
vectors as an :class:`~lsr.index.inverted.InvertedIndex` with float32 weights (no quantisation:
scores are those of a fresh build, bit for bit). Documents are encoded by the encoder a fresh
``SpladeRetriever`` / ``InferenceFreeRetriever`` builds from the same options, blank documents
emptied as the retrievers do. Queries are encoded once per search call; every segment is searched
and the top ``k`` merged by (score desc, segment ordinal, position). A merge stacks the stored
vectors of the kept documents (no re-encoding).
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.collection.engines.base import Engine, Hits, check_n_docs, check_search, merge_hits, parts_mask
from lsr.index.inverted import InvertedIndex
from lsr.retrievers.options import InferenceFreeOptions, SpladeOptions

logger = logging.getLogger(__name__)

__all__ = ["SpladeEngine", "InferenceFreeEngine", "SparsePart", "search_masked"]

#: encoder settings that change the documents' vectors (a collection reopened with others is refused)
DOCUMENT_SETTINGS = ("type", "model", "doc_max_length", "top_k", "min_weight", "vocab_size")


class SparsePart:
    """One segment: its InvertedIndex (memory-mapped)."""

    def __init__(self, directory: Path, index: InvertedIndex) -> None:
        self.directory = Path(directory)
        self.index = index
        self.n_docs = index.n_docs


def search_masked(index: InvertedIndex, queries: Any, k: int, mask: np.ndarray | None,
                  threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``index`` among the documents ``mask`` allows (None = all): ``(nq, k)``
    positions and scores, ties to the lower position, padded with -1 / 0."""
    k = min(k, index.n_docs)
    if k == 0:
        nq = queries.indptr.size - 1
        return np.full((nq, 0), -1, np.int64), np.zeros((nq, 0), np.float32)
    if mask is None:
        res = index.search(queries, k=k, threads=threads)
        return res.ids, res.scores
    if "allowed" in inspect.signature(index.search).parameters:
        res = index.search(queries, k=k, threads=threads, allowed=mask)
        return res.ids, res.scores
    # TODO(lsr/index allowed=): until InvertedIndex.search takes a mask, rank every matching
    # document (exact, k = n_docs) and keep the first k allowed ones: exact, slow on large segments.
    res = index.search(queries, k=index.n_docs, threads=threads)
    ids, scores = res.ids, res.scores
    ok = (ids >= 0) & mask[np.maximum(ids, 0)]
    out_ids = np.full((ids.shape[0], k), -1, np.int64)
    out_scores = np.zeros((ids.shape[0], k), np.float32)
    for r in range(ids.shape[0]):
        keep = np.flatnonzero(ok[r])[:k]
        out_ids[r, :keep.size], out_scores[r, :keep.size] = ids[r, keep], scores[r, keep]
    return out_ids, out_scores


class SpladeEngine(Engine):
    """SPLADE: documents and queries through the masked-LM encoder of :class:`SpladeOptions`."""

    name = "splade"
    options_class: type = SpladeOptions

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        if options.doc_vectors is not None:
            raise ValueError("doc_vectors: a collection encodes the documents it is given (no pre-encoded shards)")
        from lsr.retrievers.base import retriever_class

        self.encoder = retriever_class(self.name).from_options(options).encoder

    def state(self) -> dict[str, Any]:
        cfg = self.encoder.config()
        return {"encoder": {k: cfg.get(k) for k in DOCUMENT_SETTINGS}}

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> Any:
        """The documents' vectors as a fresh retriever indexes them (blank documents emptied)."""
        from lsr.retrievers.sparse import _blank_rows_emptied

        texts = list(texts)
        return _blank_rows_emptied(self.encoder.encode_documents(texts, show_progress=show_progress), texts)

    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        index = InvertedIndex.from_csr(self.encode(texts, show_progress), decoded=False)
        index._write(Path(directory))

    def merge_segments(self, parts: Sequence[tuple[SparsePart, np.ndarray]], directory: Path) -> None:
        import scipy.sparse as sp

        keeps = parts_mask(parts)
        rows = [part.index.to_csr()[keep] for (part, _), keep in zip(parts, keeps)]
        vocab = self.encoder.vocab_size if not rows else rows[0].shape[1]
        matrix = sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, vocab), dtype=np.float32)
        InvertedIndex.from_csr(matrix, decoded=False)._write(Path(directory))

    def open_segment(self, directory: Path, n_docs: int) -> SparsePart:
        # sizes, dtypes, shapes and every block are checked; the segment manifest holds the hashes
        index = InvertedIndex.load(directory, mmap=True, verify=False)
        check_n_docs(Path(directory), index.n_docs, n_docs)
        if index.quantization is not None or index.vocab_size != self.encoder.vocab_size:
            from lsr.errors import IndexFormatError

            raise IndexFormatError(f"{directory}: a {index.vocab_size}-term index"
                                   f"{' with 8-bit impacts' if index.quantization else ''}, expected float32 "
                                   f"weights over the encoder's {self.encoder.vocab_size} terms")
        # a snapshot searches every segment for each query batch: small segments go to the compiled
        # kernels instead of InvertedIndex's numpy scan (made for one-off searches of a fresh process;
        # bit-identical, but a Python loop per query: 18x slower over 32 segments of 1,000 documents)
        index.NUMPY_SEARCH_WORK = 0
        return SparsePart(Path(directory), index)

    def encode_queries(self, queries: list[str]) -> Any:
        from lsr.retrievers.sparse import _blank_rows_emptied

        return _blank_rows_emptied(self.encoder.encode_queries(queries), queries)

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[SparsePart, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        queries, k, masks = check_search(queries, k, segments, allowed, search_options, self.name)
        if not segments or not queries:
            return merge_hits([], len(queries), k)
        q = self.encode_queries(queries)  # once for every segment
        per_segment = [search_masked(part.index, q, k, mask, threads) for (part, _), mask in zip(segments, masks)]
        return merge_hits(per_segment, len(queries), k)


class InferenceFreeEngine(SpladeEngine):
    """Inference-free: model-encoded documents, IDF-weighted tokenizer queries (no model at query time)."""

    name = "inference-free"
    options_class = InferenceFreeOptions
