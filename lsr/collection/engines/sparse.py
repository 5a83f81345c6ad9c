"""Learned sparse engines (SPLADE, inference-free): a float32 InvertedIndex per segment.

A learned document vector does not depend on other documents, so a segment is the documents'
vectors as an :class:`~lsr.index.inverted.InvertedIndex` with float32 weights (no quantisation:
scores are those of a fresh build, bit for bit). Documents are encoded by the encoder a fresh
``SpladeRetriever`` / ``InferenceFreeRetriever`` builds from the same options, blank documents
emptied as the retrievers do. Queries are encoded once per search call. The small segments of a
snapshot (below ``InvertedIndex.EXACT_SCAN_BELOW`` documents) are searched together in one
kernel call over their posting lists joined into groups (:meth:`SpladeEngine._joined`;
docs/collections.md, "Benchmark"); each larger segment by its own index (MaxScore); the hits
merged by (score desc, segment ordinal, position). A merge stacks the stored vectors of the kept
documents (no re-encoding).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections import OrderedDict
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
)
from lsr.index.inverted import InvertedIndex
from lsr.retrievers.base import as_queries
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

    def check_encoded(self, vectors: Any) -> None:
        from lsr.collection.encoded import check_vectors

        check_vectors(vectors, "sparse", self.encoder.vocab_size, self.encoder.config(), DOCUMENT_SETTINGS[1:],
                      self.name)

    def write_encoded(self, encoded: Any, texts: Sequence[str], directory: Path) -> None:
        from lsr.retrievers.sparse import _blank_rows_emptied

        if encoded.indptr.size - 1 != len(texts):  # finite: EncodedDocuments refuses NaN and inf
            raise ValueError(f"{encoded.indptr.size - 1} vectors for {len(texts)} documents")
        index = InvertedIndex.from_csr(_blank_rows_emptied(encoded, list(texts)), decoded=False)
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

    def query_vectors(self, queries: Sequence[str]) -> Any:
        return self.encode_queries(list(queries))

    def encode_queries(self, queries: list[str]) -> Any:
        from lsr.retrievers.sparse import _blank_rows_emptied

        return _blank_rows_emptied(self.encoder.encode_queries(queries), queries)

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[SparsePart, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        given = given_query_vectors(search_options, len(as_queries(queries)), _sparse_rows)
        if given is not None and given.vocab_size != self.encoder.vocab_size:
            raise ValueError(f"query_vectors: vocabulary {given.vocab_size}, the encoder's is {self.encoder.vocab_size}")
        queries, k, masks = check_search(queries, k, segments, allowed, search_options, self.name)
        if not segments or not queries:
            return merge_hits([], len(queries), k)
        q = self.encode_queries(queries) if given is None else given  # once for every segment
        small = [i for i, (part, _) in enumerate(segments) if _joinable(part.index)]
        if len(small) < 2:
            small = []
        per_segment: list = [None] * len(segments)
        for i, ((part, _), mask) in enumerate(zip(segments, masks)):
            if i not in small:  # a large segment: its own index (MaxScore), or a lone small one
                per_segment[i] = search_masked(part.index, q, k, mask, threads)
        if small:
            glob, scores = self._search_small([segments[i][0] for i in small], [masks[i] for i in small], q, k,
                                              threads)
            bases = self._joined([segments[i][0] for i in small])[2]
            found = glob >= 0
            seg = np.where(found, np.searchsorted(bases, glob, side="right") - 1, -1)
            pos = np.where(found, glob - bases[np.maximum(seg, 0)], -1)
            if len(small) == len(segments):  # one kernel call answered for every segment
                return seg, pos, scores
            for j, i in enumerate(small):
                mine = seg == j
                per_segment[i] = (np.where(mine, pos, -1), np.where(mine, scores, np.float32(0.0)))
        return merge_hits(per_segment, len(queries), k)

    # ----------------------------------------------------------- small segments, one kernel call
    def _joined(self, parts: list[SparsePart]) -> tuple:
        """(typed lists of offsets, docs, weights of the parts' groups; the groups' bases over the
        parts' positions; the parts' bases; the largest group's size; the parts), made once per
        snapshot. Consecutive parts are grouped up to :data:`JOIN_DOCS` documents and each group's
        lists joined (:func:`~lsr.collection._sparse_kernels.join_segments`) while the snapshot's
        joined copies stay within :data:`JOIN_BUDGET_BYTES`; a group of one part (and every part
        past the budget) is searched in its own arrays. A group already joined for one of the
        :data:`SNAPSHOTS_CACHED` snapshots kept is reused (a new segment changes only the last
        group), so the copies in memory are those of at most that many snapshots."""
        key = tuple(id(p) for p in parts)
        with _CACHE_LOCK:
            cache = self.__dict__.setdefault("_joined_cache", OrderedDict())
            got = cache.get(key)
            if got is not None and all(a is b for a, b in zip(got[4], parts)):
                cache.move_to_end(key)
                return got
            known = {k: v for entry in cache.values() for k, v in entry[5].items()}
        groups: list[list[SparsePart]] = [[]]
        size = budget = 0
        for p in parts:
            if size >= JOIN_DOCS or budget > JOIN_BUDGET_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += p.n_docs
            budget += 8 * p.index.nnz
        joined: dict[tuple, tuple] = {}
        arrays = []
        for g in groups:
            gkey = tuple(id(p) for p in g)
            hit = known.get(gkey)
            if hit is None or not all(a is b for a, b in zip(hit[3], g)):
                hit = (*self._join(g), tuple(g))
            if len(g) > 1:
                joined[gkey] = hit
            arrays.append(hit[:3])
        lists = _kernels().segment_lists(*zip(*arrays))
        bases = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([p.n_docs for p in parts], out=bases[1:])
        group_bases = np.zeros(len(groups) + 1, np.int64)
        np.cumsum([sum(p.n_docs for p in g) for g in groups], out=group_bases[1:])
        got = (lists, group_bases, bases, int(np.diff(group_bases).max()), tuple(parts), joined)
        with _CACHE_LOCK:
            cache[key] = got
            while len(cache) > SNAPSHOTS_CACHED:
                cache.popitem(last=False)
        return got

    @staticmethod
    def _join(parts: list[SparsePart]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, docs, weights) of these consecutive parts' lists joined into one (a part
        alone: its own arrays)."""
        if len(parts) == 1:
            i = parts[0].index
            return i.offsets, i.postings.raw_docs, i.postings.weights
        kern = _kernels()
        lists = kern.segment_lists([p.index.offsets for p in parts], [p.index.postings.raw_docs for p in parts],
                                   [p.index.postings.weights for p in parts])
        bases = np.zeros(len(parts), np.int64)
        np.cumsum([p.n_docs for p in parts[:-1]], out=bases[1:])
        nnz = sum(p.index.nnz for p in parts)
        out = (np.empty(parts[0].index.offsets.size, np.int64), np.empty(nnz, np.int32), np.empty(nnz, np.float32))
        kern.join_segments(*lists, bases, *out)
        return out

    def _search_small(self, parts: list[SparsePart], masks: list[np.ndarray | None], q: Any, k: int,
                      threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` over the small segments ``parts`` in one kernel call per thread:
        ``(nq, k)`` positions over the parts (in order) and scores, padded -1 / 0."""
        (offsets_l, docs_l, weights_l), group_bases, _, largest = self._joined(parts)[:4]
        indptr = np.ascontiguousarray(q.indptr, np.int64)
        terms = np.ascontiguousarray(q.indices, np.int64)
        weights = np.ascontiguousarray(q.data, np.float32)
        nq = indptr.size - 1
        if all(m is None for m in masks):
            mask, rows, row_bounds = _NO_MASK, _NO_ROWS, np.zeros(len(parts) + 1, np.int64)
        else:
            full = np.concatenate([np.ones(p.n_docs, bool) if m is None else m for p, m in zip(parts, masks)])
            rows = np.flatnonzero(full)
            row_bounds = np.searchsorted(rows, group_bases)
            mask = full.view(np.uint8)
        positive = all(p.index.positive for p in parts)
        glob = np.empty((nq, k), np.int64)
        scores = np.empty((nq, k), np.float32)

        def run(a: int, b: int) -> None:
            acc, seen, touched = _scratch(largest)
            _kernels().search_segments(indptr[a:b + 1] - indptr[a], terms[indptr[a]:indptr[b]],
                                       weights[indptr[a]:indptr[b]], positive, offsets_l, docs_l, weights_l,
                                       group_bases, mask, mask is not _NO_MASK, rows, row_bounds, k, acc, seen,
                                       touched,
                                       glob[a:b], scores[a:b])

        threads = max(1, min(int(threads), nq))
        if threads == 1:
            run(0, nq)
        else:  # the kernel releases the GIL: query chunks on threads
            from concurrent.futures import ThreadPoolExecutor

            cuts = np.linspace(0, nq, threads + 1).astype(int)
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda ab: run(*ab), zip(cuts[:-1], cuts[1:])))
        return glob, scores


#: snapshots whose joined small segments each engine keeps (the current one and the one before)
SNAPSHOTS_CACHED = 2
#: consecutive small segments are joined into groups of about this many documents
JOIN_DOCS = 1 << 16
#: at most this many bytes of joined copies (8 per posting) per snapshot; past it, small
#: segments are searched in their own arrays (still in the one kernel call)
JOIN_BUDGET_BYTES = 1 << 30
_CACHE_LOCK = threading.Lock()
_LOCAL = threading.local()
_NO_ROWS = np.zeros(0, np.int64)
_NO_MASK = np.zeros(0, np.uint8)


def _joinable(index: InvertedIndex) -> bool:
    """Is this segment searched with the other small ones in one call? Small (an index of its
    size would scan exhaustively anyway), float32 weights, lists decoded in memory."""
    return (index.n_docs < index.EXACT_SCAN_BELOW and index.quantization is None
            and (index.postings.raw_docs.size > 0 or index.nnz == 0))


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's kernel accumulators (the kernel leaves them zero), at least ``n`` long."""
    got = getattr(_LOCAL, "scratch", None)
    if got is None or got[0].size < n:
        got = (np.zeros(n, np.float32), np.zeros(n, np.bool_), np.empty(max(n, 1), np.int64))
        _LOCAL.scratch = got
    return got


def _sparse_rows(vectors: Any) -> int:
    """Rows of given query vectors (a SparseBatch, the engine's own encoding)."""
    from lsr.types import SparseBatch

    if not isinstance(vectors, SparseBatch):
        raise TypeError(f"query_vectors: a SparseBatch (the engine's query_vectors), not {type(vectors).__name__}")
    return int(vectors.indptr.size - 1)


def _kernels() -> Any:
    from lsr.collection import _sparse_kernels

    return _sparse_kernels


class InferenceFreeEngine(SpladeEngine):
    """Inference-free: model-encoded documents, IDF-weighted tokenizer queries (no model at query time)."""

    name = "inference-free"
    options_class = InferenceFreeOptions

    @classmethod
    def create(cls, options: Any) -> "InferenceFreeEngine":
        """As :meth:`Engine.create`, with the document length pinned in the options: the one the
        model declares now (``doc_max_length=None``) stays the collection's, whatever the model
        directory says later."""
        engine = cls(options)
        if options.doc_max_length is None:
            engine.options = dataclasses.replace(options, doc_max_length=engine.encoder.doc_max_length)
        return engine
