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

from lsr.index._format import (
    IndexFormatError,
    atomic_directory,
    load_array,
    load_ids,
    read_manifest,
    save_array,
    save_ids,
    write_manifest,
)
from lsr.sparse import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["InvertedIndex"]

_PARALLEL_LOCK = threading.Lock()


def _as_csr_parts(queries: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Accept a SparseBatch or any scipy sparse matrix; return checked CSR arrays."""
    if isinstance(queries, SparseBatch):
        return queries.indptr, queries.indices, queries.data, queries.vocab_size
    import scipy.sparse as sp

    if not sp.issparse(queries):
        raise TypeError(f"queries must be a SparseBatch or scipy sparse matrix, not {type(queries).__name__}")
    b = SparseBatch.from_scipy(queries)
    return b.indptr, b.indices, b.data, b.vocab_size


class InvertedIndex:
    """Term-major postings (document positions and float32 impacts) searched exactly.

    Build with :meth:`from_csr`, query with :meth:`search`, persist with :meth:`save` and
    :meth:`load` (memory-mapped). ``doc_ids`` maps row positions to external ids.
    """

    FORMAT = "lsr.inverted"
    VERSION = 1

    def __init__(
        self,
        offsets: np.ndarray,
        post_docs: np.ndarray,
        post_weights: np.ndarray,
        n_docs: int,
        doc_ids: Sequence[str] | np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if offsets.dtype != np.int64 or post_docs.dtype != np.int32 or post_weights.dtype != np.float32:
            raise TypeError("postings must be int64 offsets, int32 document positions, float32 weights")
        if offsets.ndim != 1 or offsets.size < 1 or post_docs.shape != post_weights.shape:
            raise ValueError("inconsistent posting arrays")
        if int(offsets[-1]) != post_docs.size:
            raise ValueError(f"offsets end at {int(offsets[-1])} but there are {post_docs.size} postings")
        self.offsets = offsets
        self.post_docs = post_docs
        self.post_weights = post_weights
        self.n_docs = int(n_docs)
        if doc_ids is None:
            doc_ids = np.array([str(i) for i in range(self.n_docs)], dtype=object)
        doc_ids = np.asarray(doc_ids, dtype=object)
        if doc_ids.shape != (self.n_docs,):
            raise ValueError(f"{doc_ids.size} doc_ids for {self.n_docs} documents")
        self.doc_ids = doc_ids
        # all impacts > 0 lets the kernel find matches by score instead of tracking them
        self.positive = bool(post_weights.size == 0 or float(post_weights.min()) > 0.0)
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ------------------------------------------------------------------ build
    @classmethod
    def from_csr(
        cls,
        matrix: Any,
        doc_ids: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> "InvertedIndex":
        """Build from a documents x vocabulary sparse matrix (scipy or :class:`SparseBatch`).

        Duplicate entries are summed and explicit zeros dropped. Documents with no terms are
        kept (they can never be returned).
        """
        import scipy.sparse as sp

        if isinstance(matrix, SparseBatch):
            matrix = matrix.to_scipy()
        if not sp.issparse(matrix):
            raise TypeError(f"expected a scipy sparse matrix or SparseBatch, got {type(matrix).__name__}")
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        if m.nnz and not np.all(np.isfinite(m.data)):
            raise ValueError("document weights must be finite (found NaN or inf)")
        m.sum_duplicates()
        m.eliminate_zeros()
        n_docs, vocab_size = m.shape
        if doc_ids is not None:
            doc_ids = [str(x) for x in doc_ids]
            if len(doc_ids) != n_docs:
                raise ValueError(f"{len(doc_ids)} doc_ids for {n_docs} documents")
            if len(set(doc_ids)) != n_docs:
                seen: set[str] = set()
                dup = next(x for x in doc_ids if x in seen or seen.add(x))
                raise ValueError(f"duplicate document id {dup!r}")
        csc = m.tocsc()
        csc.sort_indices()
        return cls(
            np.ascontiguousarray(csc.indptr, dtype=np.int64),
            np.ascontiguousarray(csc.indices, dtype=np.int32),
            np.ascontiguousarray(csc.data, dtype=np.float32),
            n_docs,
            doc_ids,
            metadata,
        )

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.offsets.size - 1

    @property
    def nnz(self) -> int:
        return int(self.post_docs.size)

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"InvertedIndex(n_docs={self.n_docs}, vocab_size={self.vocab_size}, postings={self.nnz})"

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int = 10, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by inner product for a batch of sparse queries.

        Args:
            queries: a :class:`SparseBatch` or scipy sparse matrix (queries x vocabulary).
                Term ids outside the index vocabulary match nothing.
            k: results per query.
            threads: worker threads over queries (results do not depend on it).

        Returns:
            ``(ids, scores)``: ``int64`` row positions and ``float32`` scores, both of shape
            ``(nq, k)``, best first, ties broken by lower position; rows are padded with
            ``-1`` / ``0.0`` when fewer than ``k`` documents share a term with the query.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        indptr, indices, data, _ = _as_csr_parts(queries)
        nq = indptr.size - 1
        k = int(k)
        ids = np.empty((nq, k), dtype=np.int64)
        scores = np.empty((nq, k), dtype=np.float32)
        if nq == 0:
            return ids, scores
        from lsr.index import _kernels

        threads = min(int(threads), nq)
        args = (indptr, indices, data, self.offsets, self.post_docs, self.post_weights, self.n_docs,
                self.positive, k)
        if threads == 1:
            _kernels.search_serial(*args, ids, scores)
        else:
            import numba

            threads = min(threads, numba.config.NUMBA_NUM_THREADS)
            # numba's default 'workqueue' layer cannot run two parallel regions at once.
            with _PARALLEL_LOCK:
                numba.set_num_threads(threads)
                _kernels.search_parallel(*args, threads, ids, scores)
        return ids, scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the index to directory ``path`` atomically (see docs/FORMAT.md)."""
        with atomic_directory(path, self.FORMAT, overwrite=overwrite) as tmp:
            self._write(tmp)

    def _write(self, directory: Path) -> None:
        save_array(directory, "offsets.npy", self.offsets)
        save_array(directory, "postings_docs.npy", self.post_docs)
        save_array(directory, "postings_weights.npy", self.post_weights)
        save_ids(directory, "doc_ids.parquet", self.doc_ids)
        write_manifest(
            directory,
            self.FORMAT,
            self.VERSION,
            {
                "n_docs": self.n_docs,
                "vocab_size": self.vocab_size,
                "n_postings": self.nnz,
                "dtypes": {"offsets": "int64", "postings_docs": "int32", "postings_weights": "float32"},
                "metadata": self.metadata,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "InvertedIndex":
        """Open an index directory; arrays are memory-mapped unless ``mmap=False``.

        ``verify`` checks every file's SHA-256 against the manifest (sizes, dtypes, shapes
        and posting order are always checked). Raises :class:`IndexFormatError` on a
        missing, truncated, edited, foreign or newer-version directory.
        """
        path = Path(path)
        m = read_manifest(path, cls.FORMAT, cls.VERSION, verify=verify)
        try:
            n_docs, vocab_size, nnz = int(m["n_docs"]), int(m["vocab_size"]), int(m["n_postings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}/manifest.json: missing or bad count field ({exc})") from exc
        offsets = load_array(path, "offsets.npy", np.int64, (vocab_size + 1,), mmap)
        post_docs = load_array(path, "postings_docs.npy", np.int32, (nnz,), mmap)
        post_w = load_array(path, "postings_weights.npy", np.float32, (nnz,), mmap)
        if offsets[-1] != nnz:
            raise IndexFormatError(f"{path}/offsets.npy: ends at {int(offsets[-1])}, expected {nnz}")
        from lsr.index import _kernels

        bad = _kernels.check_postings(offsets, post_docs, n_docs)
        if bad >= 0:
            raise IndexFormatError(f"{path}/postings_docs.npy: malformed postings at position {bad}")
        doc_ids = load_ids(path, "doc_ids.parquet", n_docs)
        return cls(offsets, post_docs, post_w, n_docs, doc_ids, m.get("metadata") or {})
