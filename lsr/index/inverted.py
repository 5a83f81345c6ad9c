"""Numba-accelerated inverted index for sparse vectors (learned sparse and BM25 alike).

>>> import numpy as np, scipy.sparse as sp
>>> docs = sp.csr_matrix(np.array([[1.0, 0, 2.0], [0, 3.0, 1.0]], dtype=np.float32))
>>> index = InvertedIndex.from_csr(docs, doc_ids=["d1", "d2"])
>>> ids, scores = index.search(sp.csr_matrix(np.array([[0, 0, 1.0]], dtype=np.float32)), k=3)
>>> ids.tolist(), scores.tolist(), index.doc_ids[ids[0, :2]].tolist()
([[0, 1, -1]], [[2.0, 1.0, 0.0]], ['d1', 'd2'])
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.io.manifest import (
    IndexFormatError,
    atomic_directory,
    load_array,
    load_ids,
    field_bool,
    field_dict,
    field_float,
    field_int,
    positive_int,
    read_manifest,
    require_files,
    resolve_dir,
    save_array,
    save_ids,
    write_manifest,
)
from lsr.index._allowed import check_allowed
from lsr.types import SearchResults, SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["InvertedIndex"]



def check_doc_ids(doc_ids: Sequence[Any] | None, n_docs: int) -> list[str] | None:
    """External ids as strings, one per document and unique; ``None`` stays ``None``."""
    if doc_ids is None:
        return None
    ids = [str(x) for x in doc_ids]
    if len(ids) != n_docs:
        raise ValueError(f"{len(ids)} doc_ids for {n_docs} documents")
    if len(set(ids)) != n_docs:
        seen: set[str] = set()
        dup = next(x for x in ids if x in seen or seen.add(x))
        raise ValueError(f"duplicate document id {dup!r}")
    return ids


def _as_csr_parts(queries: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Accept a SparseBatch or any scipy sparse matrix; return checked CSR arrays."""
    if isinstance(queries, SparseBatch):
        return queries.indptr, queries.indices, queries.data, queries.vocab_size
    import scipy.sparse as sp

    if not sp.issparse(queries):
        raise TypeError(f"queries must be a SparseBatch or scipy sparse matrix, not {type(queries).__name__}")
    b = SparseBatch.from_scipy(queries)
    return b.indptr, b.indices, b.data, b.vocab_size


_MODES = ("exact", "approximate", "exhaustive")
#: work done by the numpy scan in this process (see InvertedIndex.NUMPY_WORK_BUDGET)
_NUMPY_WORK = [0]


def quantization_for(max_weight: float) -> dict[str, Any]:
    """Quantisation parameters for documents whose largest weight is ``max_weight``."""
    fine = float(max_weight) / 65535.0 if max_weight > 0 else 1.0
    return {"bits": 8, "scale": 257.0 * fine, "fine_bits": 16, "fine_scale": fine}


def fine_codes(weights: np.ndarray, quant: dict[str, Any]) -> np.ndarray:
    """16-bit codes of positive weights: ``clip(rint(w / fine_scale), 1, 65535)``."""
    return np.clip(np.rint(np.asarray(weights, np.float64) / quant["fine_scale"]), 1, 65535).astype(np.uint16)


def coarse_codes(codes16: np.ndarray) -> np.ndarray:
    """8-bit impacts of 16-bit codes: ``max(1, (c16 + 128) // 257)`` (exact integer arithmetic)."""
    return np.maximum(1, (codes16.astype(np.int32) + 128) // 257).astype(np.uint8)


def _forward(offsets: np.ndarray, post_docs: np.ndarray, post_w: np.ndarray, n_docs: int):
    """Doc-major copy (indptr, term ids, weights) of term-major postings; term ids ascending."""
    import scipy.sparse as sp

    vocab_size = offsets.size - 1
    csc = sp.csc_matrix((np.asarray(post_w), np.asarray(post_docs), np.asarray(offsets)),
                        shape=(n_docs, vocab_size))
    csr = csc.tocsr()
    csr.sort_indices()
    tdtype = np.uint16 if vocab_size <= 65536 else np.int32
    return (np.ascontiguousarray(csr.indptr, dtype=np.int64), np.ascontiguousarray(csr.indices, dtype=tdtype),
            np.ascontiguousarray(csr.data, dtype=post_w.dtype))


def _check_forward(path: Path, forward: tuple, vocab_size: int, nnz: int, compiled: bool = True) -> None:
    """Refuse a stored doc-major copy that does not span the postings or has out-of-range or
    unsorted term ids (kernels index with them unchecked); ``compiled=False`` checks with numpy."""
    if compiled:
        from lsr.index import _exhaustive_kernels as _kernels
    else:
        from lsr.index import _numpy_path as _kernels

    indptr, terms, _ = forward
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise IndexFormatError(f"{path}/forward_indptr.npy: does not span the {nnz} postings")
    bad = _kernels.check_forward(indptr, terms, vocab_size)
    if bad >= 0:
        raise IndexFormatError(f"{path}/forward_terms.npy: malformed row {bad} (see forward_indptr.npy)")


class Postings:
    """Block-compressed term-major posting lists (see :mod:`lsr.index._codec_kernels` and docs/FORMAT.md).

    ``offsets`` (int64, vocab + 1): each list's range in posting order; ``term_blocks`` (int64,
    vocab + 1): each list's range of blocks; per block ``block_last`` (int32, last document
    position), ``block_max`` (largest impact: uint8 codes, or float32), ``block_word`` (int64,
    blocks + 1: start of the block's bits in ``words``); ``words`` (uint32 bit streams);
    ``weights``: float32 weights in posting order for float indexes, empty for 8-bit ones (their
    impacts are inside the blocks).
    """

    ARRAYS = ("offsets", "term_blocks", "block_last", "block_max", "block_word", "words", "weights")

    def __init__(self, offsets, term_blocks, block_last, block_max, block_word, words, weights) -> None:
        self.offsets, self.term_blocks, self.block_last = offsets, term_blocks, block_last
        self.block_max, self.block_word, self.words, self.weights = block_max, block_word, words, weights
        # the lists decoded in memory (int32 positions, uint8 impacts): search reads these when
        # present (about 3x faster than decoding blocks on the fly), see :meth:`hold_decoded`
        self.raw_docs, self.raw_imps = _EMPTY_I32, _EMPTY_U8

    @property
    def decoded(self) -> bool:
        return self.raw_docs.size > 0 or int(self.offsets[-1]) == 0

    def hold_decoded(self, docs: np.ndarray | None = None, imps: np.ndarray | None = None) -> None:
        """Keep the decoded lists in memory (decoding them unless given): 4 bytes per posting
        (+1 for 8-bit impacts) of RAM for faster search."""
        if docs is None:
            docs, w = self.decode()
            imps = w if self.quantized else None
        self.raw_docs = np.ascontiguousarray(docs, dtype=np.int32)
        self.raw_imps = np.ascontiguousarray(imps, dtype=np.uint8) if self.quantized else _EMPTY_U8

    @property
    def quantized(self) -> bool:
        return self.block_max.dtype == np.uint8

    @classmethod
    def encode(cls, offsets: np.ndarray, docs: np.ndarray, weights: np.ndarray) -> "Postings":
        """Compress term-major arrays (docs ascending within each list; weights uint8 impacts
        >= 1 or float32)."""
        from lsr.index import _codec_kernels as _codec

        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        quant = weights.dtype == np.uint8
        imps = weights if quant else np.zeros(0, np.uint8)
        term_blocks, block_last, block_word, words = _codec.encode(offsets, docs, imps, quant)
        block_max = _codec.block_maxima(offsets, term_blocks, weights)
        kept = np.zeros(0, np.float32) if quant else np.ascontiguousarray(weights, dtype=np.float32)
        return cls(offsets, term_blocks, block_last, block_max, block_word, words, kept)

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """Uncompressed ``(docs int32, weights)`` in posting order (weights uint8 or float32)."""
        from lsr.index import _codec_kernels as _codec

        docs, imps = _codec.decode_all(self.kernel_args())
        return docs, (imps if self.quantized else np.asarray(self.weights))

    def kernel_args(self):
        """The lists as the kernels read them: a :data:`lsr.index._codec_kernels.PostingLists`."""
        from lsr.index._codec_kernels import PostingLists

        return PostingLists(self.offsets, self.term_blocks, self.block_last, self.block_max, self.block_word,
                            self.words, self.raw_docs, self.raw_imps,
                            self.weights if self.weights.size else _EMPTY_F32, self.quantized)

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(getattr(self, name)).nbytes for name in self.ARRAYS))


_EMPTY_F32 = np.zeros(0, np.float32)
_EMPTY_I32 = np.zeros(0, np.int32)
_EMPTY_I64 = np.zeros(0, np.int64)
_EMPTY_U8 = np.zeros(0, np.uint8)


class InvertedIndex:
    """Block-compressed term-major postings with per-term and per-block upper bounds, searched
    with pruning.

    Build with :meth:`from_csr` (optionally with 8-bit impacts), query with :meth:`search`
    (exact MaxScore by default, or an approximate mode with explicit knobs), persist with
    :meth:`save` and :meth:`load` (memory-mapped). ``doc_ids`` maps row positions to external ids.

    Attributes: ``postings`` (:class:`Postings`: document gaps and impacts in PFOR blocks of 128
    with each block's last position and largest impact), ``term_max`` (largest impact of each
    term), ``quantization`` (``None`` or ``{"bits": 8, "scale": s8, "fine_bits": 16,
    "fine_scale": s16}``: a document weight ``w`` has the 16-bit code ``c16 = clip(rint(w /
    s16), 1, 65535)`` and the impact ``c8 = max(1, (c16 + 128) // 257)``, ``s8 = 257 * s16``;
    exact scores are ``s8 * sum(query weight * c8)``), and, only when built with
    ``forward=True``, a doc-major copy ``fwd_indptr`` / ``fwd_terms`` / ``fwd_weights`` (16-bit
    codes or float32) that approximate mode re-scores candidates with.
    """

    FORMAT = "lsr.inverted"
    VERSION = 3
    #: exact mode scans exhaustively below this many documents: on small corpora (BEIR scifact,
    #: nfcorpus with SPLADE vectors) the dense scan is faster than MaxScore's bookkeeping; the
    #: result is the same (exact top-k of the index's scores, ties to the lower position)
    EXACT_SCAN_BELOW = 32768
    #: :meth:`load` reads indexes of at most this many postings with numpy instead of the
    #: compiled kernels: no Numba import, no kernel to load or compile (docs/startup.md)
    NUMPY_LOAD_POSTINGS = 1 << 19
    #: exhaustive searches of at most this many (queries x documents) run in numpy, not Numba ...
    NUMPY_SEARCH_WORK = 1 << 22
    #: ... until the process has put this much work (queries x documents, summed over every
    #: index) through the numpy scan; then the compiled kernel takes over. About the kernel's
    #: one-off load (0.5 to 1 s at numpy's ~60 ns per document and query): a short-lived process
    #: (one CLI search) never pays the load, a long-lived one stops paying numpy's per-query cost
    #: (5 to 8x the kernel's on a single query). Results are identical on both paths.
    NUMPY_WORK_BUDGET = 1 << 23
    #: a filtered exact search scores each allowed document on the doc-major copy instead of
    #: reading posting lists when ``allowed count x postings per document`` is at most this many
    #: times the query's postings (a row costs more per entry than a posting: random access)
    DIRECT_RATIO = 0.3
    #: approximate mode with fewer than this fraction of the documents allowed runs exact mode
    #: (its candidates would be too few; exact search over few documents is fast)
    FILTER_EXACT_BELOW = 0.05

    def __init__(
        self,
        postings: Postings,
        n_docs: int,
        doc_ids: Sequence[str] | np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        forward: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        term_max: np.ndarray | None = None,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        if postings.quantized != bool(quantization):
            raise TypeError("8-bit postings need a quantization and float postings none")
        self.postings = postings
        self.offsets = postings.offsets
        self.n_docs = int(n_docs)
        if doc_ids is None:
            doc_ids = np.array([str(i) for i in range(self.n_docs)], dtype=object)
        doc_ids = np.asarray(doc_ids, dtype=object)
        if doc_ids.shape != (self.n_docs,):
            raise ValueError(f"{doc_ids.size} doc_ids for {self.n_docs} documents")
        self.doc_ids = doc_ids
        # all impacts > 0 lets the kernels find matches by score and use upper bounds
        w = postings.weights
        self.positive = bool(postings.quantized or w.size == 0 or float(np.min(w)) > 0.0)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.quantization = dict(quantization) if quantization else None
        self.fwd_indptr = self.fwd_terms = self.fwd_weights = None
        if forward is not None:
            self.fwd_indptr, self.fwd_terms, self.fwd_weights = forward
            if self.fwd_indptr.shape != (self.n_docs + 1,) or self.fwd_terms.shape != (self.nnz,):
                raise ValueError("forward arrays do not match the postings")
        if term_max is None:
            from lsr.index import _maxscore_kernels as _pruning

            term_max = _pruning.term_maxima(postings.term_blocks, postings.block_max)
        self.term_max = term_max
        self._pruned: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._pruned_lock = threading.Lock()
        self._tables: tuple | None = None
        self._tables_lock = threading.Lock()

    @property
    def _bm(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-term maxima over windows of 64 positions (offsets, values): see :meth:`_search_tables`."""
        return self._search_tables()[0]

    @property
    def _mem_forward(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The in-memory doc-major copy (or ``None``): see :meth:`_search_tables`."""
        return self._search_tables()[1]

    def _search_tables(self) -> tuple:
        """In-memory tables of the decoded mode: per-term maxima over windows of 64 positions and,
        unless the index stores a forward copy, a doc-major copy of the 8-bit impacts (as their
        exact 16-bit codes ``257 * c8``) or float weights, with which exact search finishes its
        candidates (and approximate mode re-scores them). Nothing when searching in place.

        Made on first use, not on load: the exhaustive scan (small indexes) never reads them,
        and making them costs a compiled kernel and scipy's import."""
        with self._tables_lock:
            if self._tables is None:
                self._tables = self._derive_search_tables()
            return self._tables

    def _derive_search_tables(self) -> tuple:
        bm = (np.zeros(self.vocab_size + 1, np.int64), np.zeros(0, np.uint8 if self.quantization else np.float32))
        p = self.postings
        if not p.decoded or self.nnz == 0:
            return bm, None
        from lsr.index import _maxscore_kernels as _pruning

        w = p.raw_imps if p.quantized else p.weights
        bm = _pruning.window_maxima(self.offsets, p.raw_docs, w, self.n_docs, max(1, (self.n_docs >> 6) + 1))
        if self.has_forward:
            return bm, None
        fw = w.astype(np.uint16) * np.uint16(257) if p.quantized else w
        return bm, _forward(self.offsets, p.raw_docs, fw, self.n_docs)

    @property
    def has_forward(self) -> bool:
        return self.fwd_indptr is not None

    # ------------------------------------------------------------------ build
    @classmethod
    def from_shards(cls, shards: Any, path: str | os.PathLike, **kwargs: Any) -> "InvertedIndex":
        """Build from document shards larger than memory straight into directory ``path``; see
        :func:`lsr.index.build.build_index` (same arrays as :meth:`from_csr` on the concatenation)."""
        from lsr.index.build import build_index

        return build_index(shards, path, **kwargs)

    @classmethod
    def from_csr(
        cls,
        matrix: Any,
        doc_ids: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        quantize: int | None = None,
        forward: bool = False,
        decoded: bool = True,
    ) -> "InvertedIndex":
        """Build from a documents x vocabulary sparse matrix (scipy or :class:`SparseBatch`).

        Duplicate entries are summed and explicit zeros dropped. Documents with no terms are
        kept (they can never be returned). ``quantize=8`` stores 8-bit impacts (global scale,
        see the class docstring; weights must then be positive): smaller and faster, and
        exact search returns the true top-k of the quantised scores. ``None`` keeps float32.
        ``forward=True`` also keeps a doc-major copy (16-bit codes or float32 weights, about
        4 bytes per posting) with which approximate mode re-scores its candidates more finely
        and faster; without it they are re-scored from the posting lists with the index's own
        weights. ``decoded`` keeps the lists decoded in memory as well (see :meth:`load`).
        """
        import scipy.sparse as sp

        if quantize not in (None, 8):
            raise ValueError(f"quantize must be None or 8, got {quantize!r}")
        if isinstance(matrix, SparseBatch):
            matrix = matrix.to_scipy()
        if not sp.issparse(matrix):
            raise TypeError(f"expected a scipy sparse matrix or SparseBatch, got {type(matrix).__name__}")
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        if m.nnz and not np.all(np.isfinite(m.data)):
            raise ValueError("document weights must be finite (found NaN or inf)")
        m.sum_duplicates()
        m.eliminate_zeros()
        m.sort_indices()
        n_docs, vocab_size = m.shape
        doc_ids = check_doc_ids(doc_ids, n_docs)
        quant = None
        if quantize:
            if m.nnz and float(m.data.min()) <= 0.0:
                raise ValueError("quantize=8 needs positive document weights; use quantize=None")
            quant = quantization_for(float(m.data.max()) if m.nnz else 1.0)
            fwd_w = fine_codes(m.data, quant)
        else:
            fwd_w = m.data
        tdtype = np.uint16 if vocab_size <= 65536 else np.int32
        fwd = None
        if forward:
            fwd = (np.ascontiguousarray(m.indptr, dtype=np.int64), np.ascontiguousarray(m.indices, dtype=tdtype),
                   np.ascontiguousarray(fwd_w))
        # term-major copy: stable counting sort of the entries by term (documents stay ascending)
        order = np.argsort(m.indices, kind="stable")
        offsets = np.zeros(vocab_size + 1, dtype=np.int64)
        np.cumsum(np.bincount(m.indices, minlength=vocab_size), out=offsets[1:])
        rows = np.repeat(np.arange(n_docs, dtype=np.int32), np.diff(m.indptr))
        post_docs = np.ascontiguousarray(rows[order])
        del rows
        post_w = coarse_codes(fwd_w[order]) if quant else np.ascontiguousarray(fwd_w[order])
        del order, m
        postings = Postings.encode(offsets, post_docs, post_w)
        if decoded:
            postings.hold_decoded(post_docs, post_w if quant else None)
        return cls(postings, n_docs, doc_ids, metadata, forward=fwd, quantization=quant)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.offsets.size - 1

    @property
    def nnz(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        q = f", quantization={self.quantization['bits']}-bit" if self.quantization else ""
        return f"InvertedIndex(n_docs={self.n_docs}, vocab_size={self.vocab_size}, postings={self.nnz}{q})"

    def decode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Uncompressed term-major ``(offsets, docs int32, weights)`` (weights: uint8 impacts or
        float32)."""
        docs, w = self.postings.decode()
        return self.offsets, docs, w

    def to_csr(self):
        """Doc-major ``scipy.sparse.csr_matrix`` of the weights the exact search scores with
        (dequantised 8-bit impacts when quantised)."""
        import scipy.sparse as sp

        _, docs, w = self.decode()
        w = np.asarray(w, dtype=np.float32)
        if self.quantization:
            w = w * np.float32(self.quantization["scale"])
        csc = sp.csc_matrix((w, docs, np.asarray(self.offsets)), shape=(self.n_docs, self.vocab_size))
        csr = csc.tocsr()
        csr.sort_indices()
        return csr

    def pruned(self, n_postings: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Statically pruned copy (offsets, docs, impacts as float32) keeping each list's
        ``n_postings`` highest impacts in document order; computed once per value and cached in
        memory (not saved: it is derived from the postings in about a second per million documents)."""
        with self._pruned_lock:
            if n_postings not in self._pruned:
                from lsr.index import _maxscore_kernels as _pruning

                self._pruned[n_postings] = _pruning.prune_lists(self.postings.kernel_args(), int(n_postings))
            return self._pruned[n_postings]

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int = 10, threads: int = 1, mode: str = "exact",
               n_postings: int | None = None, query_cut: int | None = None, heap_factor: float = 0.0,
               candidates: int | None = None, allowed: np.ndarray | None = None) -> SearchResults:
        """Top-``k`` by inner product for a batch of sparse queries, as
        :class:`~lsr.types.SearchResults` of shape ``(nq, min(k, n_docs))``: row positions best
        first (ties to the lower position), padded with ``-1`` / ``0.0`` when fewer documents
        share a term with the query. ``k`` beyond the corpus is capped, not allocated; the other
        arguments are those of :meth:`search_arrays`."""
        k = min(positive_int(k, "k"), self.n_docs)
        if k == 0:
            nq = _as_csr_parts(queries)[0].size - 1
            return SearchResults(np.empty((nq, 0), np.int64), np.empty((nq, 0), np.float32), self.doc_ids)
        ids, scores = self.search_arrays(queries, k, threads, mode, n_postings, query_cut, heap_factor, candidates,
                                         allowed)
        return SearchResults(ids, scores, self.doc_ids)

    def search_arrays(
        self,
        queries: Any,
        k: int = 10,
        threads: int = 1,
        mode: str = "exact",
        n_postings: int | None = None,
        query_cut: int | None = None,
        heap_factor: float = 0.0,
        candidates: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for a batch of sparse queries.

        Args:
            queries: a :class:`SparseBatch` or scipy sparse matrix (queries x vocabulary).
                Term ids outside the index vocabulary match nothing; duplicates are summed.
            k: results per query.
            threads: worker threads over queries (results do not depend on it).
            mode: ``"exact"`` (MaxScore dynamic pruning; returns exactly the top ``k`` of the
                index's scores), ``"exhaustive"`` (same result, no pruning; a baseline), or
                ``"approximate"`` (the knobs below; candidates are re-scored over all query
                terms: with the forward copy's 16-bit or float weights when the index has one,
                so its scores are finer than the 8-bit exact ones, else with the index's own).
            n_postings: approximate mode: read only the ``n_postings`` highest impacts of each
                posting list (static pruning, computed once and cached; ``None`` reads whole lists).
            query_cut: approximate mode: find candidates with only the ``query_cut`` query terms
                of largest upper bound (``None``: all); re-scoring uses all terms.
            heap_factor: approximate mode: re-score only candidates whose partial score is at
                least ``heap_factor`` times the ``k``-th best partial score (0: all candidates).
            candidates: approximate mode: re-score at most this many documents, those of best
                partial score (``None``: ``10 * k``).
            allowed: the documents that may be returned (bool, or uint8 with non-zero = allowed,
                of length ``n_docs``; ``None``: all). Exact and exhaustive modes return exactly
                the top ``k`` among the allowed documents (``k`` results whenever ``k`` of them
                share a term with the query): disallowed documents never enter the heaps, so
                MaxScore's bounds stay valid. When scoring each allowed document on the
                doc-major copy costs less than the query's posting lists (``allowed count x
                postings per document <= DIRECT_RATIO x the query's postings``, on average over
                the batch), exact mode does that instead (same result, faster for selective
                masks). Approximate mode draws its candidates from the allowed documents of the
                (pruned) lists only, so it may return fewer than ``k`` or miss some; with fewer
                than ``FILTER_EXACT_BELOW x n_docs`` documents allowed it runs exact mode instead
                (its scores are then the exact 8-bit ones, not the forward copy's finer ones).

        Returns:
            ``(ids, scores)``: ``int64`` row positions and ``float32`` scores, both of shape
            ``(nq, k)``, best first, ties broken by lower position; rows are padded with
            ``-1`` / ``0.0`` when fewer than ``k`` (allowed) documents share a term with the query.
        """
        k = positive_int(k, "k")
        threads = positive_int(threads, "threads")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if n_postings is not None and (isinstance(n_postings, bool) or int(n_postings) < 1):
            raise ValueError(f"n_postings must be a positive integer or None, got {n_postings!r}")
        if query_cut is not None and (isinstance(query_cut, bool) or int(query_cut) < 1):
            raise ValueError(f"query_cut must be a positive integer or None, got {query_cut!r}")
        if candidates is not None and (isinstance(candidates, bool) or int(candidates) < 1):
            raise ValueError(f"candidates must be a positive integer or None, got {candidates!r}")
        if not np.isfinite(heap_factor) or heap_factor < 0:
            raise ValueError(f"heap_factor must be >= 0, got {heap_factor!r}")
        mask = check_allowed(allowed, self.n_docs)
        indptr, indices, data, _ = _as_csr_parts(queries)
        nq = indptr.size - 1
        k = int(k)
        ids = np.empty((nq, k), dtype=np.int64)
        scores = np.empty((nq, k), dtype=np.float32)
        if nq == 0:
            return ids, scores
        rows = None
        if mask is not None:
            rows = np.flatnonzero(mask)
            if rows.size == 0:  # nothing allowed: nothing to search
                ids.fill(-1)
                scores.fill(0.0)
                return ids, scores
            if rows.size == self.n_docs:
                mask = rows = None  # everything allowed: the unfiltered search
            elif mode == "approximate" and rows.size < self.FILTER_EXACT_BELOW * self.n_docs:
                mode = "exact"
        threads = min(int(threads), nq)
        if threads > 1:
            from lsr.index._heap_kernels import max_threads

            threads = min(threads, max_threads())
        q = self.quantization
        out_scale = float(q["scale"]) if q else 1.0
        scan = mode == "exhaustive" or not self.positive or (mode == "exact" and self.n_docs < self.EXACT_SCAN_BELOW)
        p = self.postings
        if (scan and p.decoded and nq * self.n_docs <= self.NUMPY_SEARCH_WORK
                and _NUMPY_WORK[0] < self.NUMPY_WORK_BUDGET):
            _NUMPY_WORK[0] += nq * self.n_docs
            # small work: the numpy scan (bit-identical to the kernel) answers before Numba could
            # even be imported, let alone compile (docs/startup.md)
            from lsr.index import _numpy_path

            _numpy_path.exhaustive_search(indptr, indices, data, self.offsets, p.raw_docs,
                                          p.raw_imps if p.quantized else p.weights, self.n_docs, self.positive, k,
                                          ids, scores, mask)
            if q:
                scores[ids >= 0] *= np.float32(out_scale)
            return ids, scores
        from lsr.index import _exhaustive_kernels as _kernels

        batch = _kernels.QueryBatch(indptr, indices, data)
        if rows is not None and mode == "exact" and self._direct_pays(indices, nq, rows.size):
            self._search_direct(batch, rows, k, threads, ids, scores)
            return ids, scores
        lists = self.postings.kernel_args()
        kmask = _kernels.NO_MASK if mask is None else _kernels.Mask(mask.view(np.uint8), rows)
        if scan:
            args = (batch, lists, self.n_docs, self.positive, k, kmask)
            self._call(_kernels.search_serial, _kernels.search_parallel, args, threads, ids, scores)
            if q:
                scores[ids >= 0] *= np.float32(out_scale)
            return ids, scores
        from lsr.index import _maxscore_kernels as _pruning

        approx = mode == "approximate"
        if approx and n_postings is not None:
            p_off, p_docs, p_w = self.pruned(int(n_postings))
        else:  # approximate mode without static pruning reads whole lists: decoded once, cached
            p_off, p_docs, p_w = self.pruned(np.iinfo(np.int64).max) if approx else (self.offsets, _EMPTY_I32,
                                                                                    _EMPTY_F32)
        if self.has_forward:
            fwd = (self.fwd_indptr, self.fwd_terms, self.fwd_weights)
        elif self._mem_forward is not None:
            fwd = self._mem_forward
        else:
            fwd = (_EMPTY_I64, np.zeros(0, np.uint16), np.zeros(0, np.uint16 if q else np.float32))
        has_fwd = self.has_forward or self._mem_forward is not None
        settings = _pruning.Settings(n_docs=self.n_docs, k=k, approx=approx, query_cut=int(query_cut or 0),
                                     heap_factor=float(heap_factor), candidates=int(candidates or 10 * k),
                                     out_scale=out_scale, fine_scale=float(q["fine_scale"]) if q else 1.0,
                                     has_forward=has_fwd, codes16=bool(q))
        args = (batch, lists, _pruning.Bounds(self.term_max, *self._bm), _pruning.Forward(*fwd),
                _pruning.Pruned(p_off, p_docs, p_w), settings, kmask)
        self._call(_pruning.search_serial, _pruning.search_parallel, args, threads, ids, scores)
        return ids, scores

    def _direct_pays(self, indices: np.ndarray, nq: int, n_allowed: int) -> bool:
        """Is scoring the ``n_allowed`` documents on a doc-major copy (stored, or derived from the
        decoded lists) cheaper than the queries' posting lists (see :attr:`DIRECT_RATIO`)?"""
        if not (self.has_forward or self.postings.decoded) or self.nnz == 0:
            return False
        inside = indices[(indices >= 0) & (indices < self.vocab_size)].astype(np.int64)
        postings = int((self.offsets[inside + 1] - self.offsets[inside]).sum())
        return nq * n_allowed * (self.nnz / self.n_docs) <= self.DIRECT_RATIO * postings

    def _search_direct(self, batch: tuple, rows: np.ndarray, k: int, threads: int, ids: np.ndarray,
                       scores: np.ndarray) -> None:
        """Exact top ``k`` among the positions ``rows``, each scored on its doc-major row."""
        from lsr.index import _maxscore_kernels as _pruning

        fwd = (self.fwd_indptr, self.fwd_terms, self.fwd_weights) if self.has_forward else self._mem_forward
        q = self.quantization
        args = (batch, _pruning.Forward(*fwd), np.ascontiguousarray(rows, dtype=np.int64), self.vocab_size, k,
                bool(q), float(q["scale"]) if q else 1.0)
        self._call(_pruning.direct_serial, _pruning.direct_parallel, args, threads, ids, scores)

    @staticmethod
    def _call(serial: Any, parallel: Any, args: tuple, threads: int, ids: np.ndarray, scores: np.ndarray) -> None:
        """``serial(*args, ids, scores)`` on this thread, or ``parallel(*args, threads, ids, scores)``
        on ``threads`` numba workers (one parallel region at a time).

        The kernels' named tuples go in as plain tuples, which the kernels name again: Numba
        types a plain tuple in C but a named one in Python, field by field, which cost about 3 us
        a call for the exhaustive kernel's two and 8 to 20 us for MaxScore's six (measured on a
        300-document index, where a whole one-query search takes 20 to 30 us)."""
        args = tuple(tuple(a) if isinstance(a, tuple) else a for a in args)
        if threads == 1:
            serial(*args, ids, scores)  # lock-free: the kernel releases the GIL
            return
        from lsr.index._heap_kernels import PARALLEL_LOCK, set_threads

        # numba's default 'workqueue' layer cannot run two parallel regions at once.
        with PARALLEL_LOCK:
            threads = set_threads(threads)
            parallel(*args, threads, ids, scores)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the index to directory ``path`` atomically (see docs/FORMAT.md)."""
        with atomic_directory(path, self.FORMAT, overwrite=overwrite) as tmp:
            self._write(tmp)

    def _arrays(self) -> dict[str, np.ndarray]:
        p = self.postings  # the block tables and term maxima are rebuilt from the words on load
        arrays = {"offsets": p.offsets, "words": p.words}
        if not p.quantized:
            arrays["weights"] = p.weights
        if self.has_forward:
            arrays.update(forward_indptr=self.fwd_indptr, forward_terms=self.fwd_terms,
                          forward_weights=self.fwd_weights)
        return arrays

    def _write(self, directory: Path, written: Sequence[str] = ()) -> None:
        """Save the arrays (except those named in ``written``, already in ``directory``), ids and manifest."""
        arrays = self._arrays()
        for name, arr in arrays.items():
            if name not in written:
                save_array(directory, name + ".npy", np.asarray(arr))
        save_ids(directory, "doc_ids.parquet", self.doc_ids)
        write_manifest(
            directory,
            self.FORMAT,
            self.VERSION,
            {
                "n_docs": self.n_docs,
                "vocab_size": self.vocab_size,
                "n_postings": self.nnz,
                "n_blocks": int(self.postings.block_last.size),
                "n_words": int(self.postings.words.size),
                "block_size": 128,
                "forward": self.has_forward,
                "dtypes": {name: str(np.asarray(arr).dtype) for name, arr in arrays.items()},
                "quantization": self.quantization,
                "metadata": self.metadata,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True,
             decoded: bool = True) -> "InvertedIndex":
        """Open an index directory; arrays are memory-mapped unless ``mmap=False``.

        ``decoded=True`` (default) also keeps the posting lists decoded in memory (4 bytes per
        posting, +1 for 8-bit impacts): search is faster than decoding blocks on the fly (docs/bench_sparse.md).
        ``decoded=False`` searches the compressed blocks in place (memory: the file size).

        ``verify`` checks every file's SHA-256 against the manifest; sizes, dtypes, shapes and
        the blocks themselves (every block decodes inside its bounds to ascending positions
        below ``n_docs`` that agree with the block's last position and maximum) are always
        checked. Raises :class:`IndexFormatError` on a missing, truncated, edited, foreign or
        newer-version directory. Version 1 and 2 directories (uncompressed postings) are read
        too and compressed in memory.

        Indexes of at most :attr:`NUMPY_LOAD_POSTINGS` postings are read and checked with numpy
        (the same tables and the same checks as the compiled kernels), so opening one needs no
        Numba at all.
        """
        path = resolve_dir(path)
        version = cls.VERSION
        try:
            import json

            found = json.loads((path / "manifest.json").read_text()).get("format_version")
            if found in (1, 2) and not isinstance(found, bool):
                version = found
        except (OSError, ValueError, AttributeError, RecursionError):
            pass  # read_manifest reports it
        m = read_manifest(path, cls.FORMAT, version, verify=verify)
        where = path / "manifest.json"
        n_docs, vocab_size, nnz = (field_int(m, key, where) for key in ("n_docs", "vocab_size", "n_postings"))
        quant = m.get("quantization") if version >= 2 else None
        if quant is not None:
            quant = {key: (field_float if "scale" in key else field_int)(m, f"quantization.{key}", where)
                     for key in ("bits", "scale", "fine_bits", "fine_scale")}
            if quant["bits"] != 8 or quant["fine_bits"] != 16:
                raise IndexFormatError(f"{where}: field 'quantization' gives {quant['bits']} and "
                                       f"{quant['fine_bits']} bits (this lsr reads 8 and 16)")
        has_fwd = version == 2
        if version == 3:
            n_blocks, n_words = field_int(m, "n_blocks", where), field_int(m, "n_words", where)
            has_fwd = field_bool(m, "forward", where)
            if field_int(m, "block_size", where) != 128:
                raise IndexFormatError(f"{where}: field 'block_size' must be 128, got {m['block_size']!r}")
        field_dict(m, "metadata", where)
        if version == 3:
            names = ["words.npy"] + ([] if quant else ["weights.npy"])
        else:
            names = ["postings_docs.npy", "postings_weights.npy"]
        if has_fwd:
            names += ["forward_indptr.npy", "forward_terms.npy", "forward_weights.npy"]
        require_files(path, m, ["offsets.npy", "doc_ids.parquet", *names])
        doc_ids = load_ids(path, "doc_ids.parquet", n_docs)
        tdtype = np.uint16 if vocab_size <= 65536 else np.int32
        fdtype = np.uint16 if quant else np.float32
        offsets = load_array(path, "offsets.npy", np.int64, (vocab_size + 1,), mmap)
        if offsets[-1] != nnz:
            raise IndexFormatError(f"{path}/offsets.npy: ends at {int(offsets[-1])}, expected {nnz}")
        if version < 3:
            return cls._load_uncompressed(path, m, version, offsets, n_docs, nnz, doc_ids, quant, mmap, decoded)
        words = load_array(path, "words.npy", np.uint32, (n_words,), mmap)
        compiled = nnz > cls.NUMPY_LOAD_POSTINGS
        if compiled:
            from lsr.index import _codec_kernels as _codec

            term_blocks, block_last, block_max, block_word, bad = _codec.derive(offsets, words, quant is not None,
                                                                                n_docs)
        else:
            from lsr.index import _numpy_path as _codec

            term_blocks, block_last, block_max, block_word, bad, docs, imps = _codec.derive(
                offsets, words, quant is not None, n_docs)
        if bad >= 0 or block_last.size != n_blocks:
            raise IndexFormatError(f"{path}/words.npy: malformed posting block {max(bad, 0)}")
        weights = _EMPTY_F32
        if quant is None:
            weights = load_array(path, "weights.npy", np.float32, (nnz,), mmap)
            block_max = _codec.block_maxima(offsets, term_blocks, weights)
        postings = Postings(offsets, term_blocks, block_last, block_max, block_word, words, weights)
        if decoded and compiled:
            postings.hold_decoded()
        elif decoded:  # numpy's derive decoded every block already
            postings.hold_decoded(docs, imps if quant else None)
        forward = None
        if has_fwd:
            forward = (load_array(path, "forward_indptr.npy", np.int64, (n_docs + 1,), mmap),
                       load_array(path, "forward_terms.npy", tdtype, (nnz,), mmap),
                       load_array(path, "forward_weights.npy", fdtype, (nnz,), mmap))
            _check_forward(path, forward, vocab_size, nnz, compiled)
        term_max = None if compiled else _codec.term_maxima(term_blocks, block_max)
        return cls(postings, n_docs, doc_ids, m.get("metadata") or {}, forward=forward, term_max=term_max,
                   quantization=quant)

    @classmethod
    def _load_uncompressed(cls, path: Path, m: dict, version: int, offsets: np.ndarray, n_docs: int, nnz: int,
                           doc_ids: np.ndarray, quant: dict | None, mmap: bool, decoded: bool) -> "InvertedIndex":
        """Version 1/2 directories: int32 postings (and, in version 2, a forward copy)."""
        from lsr.index import _exhaustive_kernels as _kernels

        post_docs = load_array(path, "postings_docs.npy", np.int32, (nnz,), mmap)
        post_w = load_array(path, "postings_weights.npy", np.uint8 if quant else np.float32, (nnz,), mmap)
        bad = _kernels.check_postings(offsets, post_docs, n_docs)
        if bad >= 0:
            raise IndexFormatError(f"{path}/postings_docs.npy: malformed postings at position {bad}")
        if quant is not None and nnz and int(np.min(post_w)) < 1:
            raise IndexFormatError(f"{path}/postings_weights.npy: an 8-bit impact is 0")
        forward = None
        if version == 2:
            vocab_size = offsets.size - 1
            forward = (load_array(path, "forward_indptr.npy", np.int64, (n_docs + 1,), mmap),
                       load_array(path, "forward_terms.npy", np.uint16 if vocab_size <= 65536 else np.int32,
                                  (nnz,), mmap),
                       load_array(path, "forward_weights.npy", np.uint16 if quant else np.float32, (nnz,), mmap))
            _check_forward(path, forward, vocab_size, nnz)
        postings = Postings.encode(offsets, np.ascontiguousarray(post_docs), np.ascontiguousarray(post_w))
        if decoded:
            postings.hold_decoded(post_docs, post_w if quant else None)
        return cls(postings, n_docs, doc_ids, m.get("metadata") or {}, forward=forward, quantization=quant)
