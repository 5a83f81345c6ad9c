"""Dense vector index over FAISS (inner product), with lsr's directory conventions.

Index types: ``flat`` (exact, ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``, inner product),
``ivf`` (``IndexIVFFlat``) and ``ivfpq`` (``IndexIVFPQ``). Positions are the order vectors
were added; ``doc_ids`` maps them to external ids. When FAISS was built with GPU support and
a GPU is visible (``faiss.get_num_gpus() > 0``), flat and IVF indexes are searched on the GPU
(``pip install faiss-gpu-cu12`` instead of ``faiss-cpu``); HNSW always runs on the CPU. The API
and results are the same either way.

On disk (format ``lsr.dense``): ``manifest.json`` (dimension, count, index type and parameters),
``faiss.index`` (written by ``faiss.write_index``, always the CPU form) and ``doc_ids.parquet``.

>>> import numpy as np
>>> idx = DenseIndex.build(np.eye(3, dtype=np.float32), doc_ids=["a", "b", "c"])   # doctest: +SKIP
>>> ids, scores = idx.search(np.array([[0, 1, 0.5]], np.float32), k=2)             # doctest: +SKIP
>>> idx.doc_ids[ids[0]].tolist(), scores.tolist()                                 # doctest: +SKIP
(['b', 'c'], [[1.0, 0.5]])
"""
from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.io.manifest import (
    IndexFormatError,
    atomic_directory,
    field_dict,
    field_int,
    field_str,
    load_ids,
    positive_int,
    read_manifest,
    resolve_dir,
    save_ids,
    write_manifest,
)
from lsr.index._allowed import check_allowed
from lsr.types import SearchResults

logger = logging.getLogger(__name__)

__all__ = ["DenseIndex", "INDEX_TYPES", "faiss_gpu_available", "import_faiss"]

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
FAISS_FILE = "faiss.index"
# documented defaults (HNSW reaches recall@10 >= 0.98 of exact on scifact/nfcorpus with these)
DEFAULTS: dict[str, Any] = {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128,
                            "nlist": None, "nprobe": None, "pq_m": None, "pq_bits": 8}
_THREADS_LOCK = threading.Lock()


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("dense indexes need FAISS: pip install 'lsr[dense]' (faiss-cpu), "
                          "or faiss-gpu-cu12 for GPU search") from exc
    return faiss


def faiss_gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees at least one GPU."""
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_MINIMUM = {"hnsw_m": 2, "ef_construction": 1, "ef_search": 1, "nlist": 1, "nprobe": 1, "pq_m": 1, "pq_bits": 1}


def _check_params(params: dict[str, Any]) -> None:
    """Integer parameters within FAISS's range (``None`` = default): FAISS aborts, crashes or hangs
    on some out-of-range values (HNSW ``M`` below 2, ``pq_bits`` 0) instead of raising."""
    for key, value in params.items():
        if value is None or key not in _MINIMUM:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < _MINIMUM[key]:
            raise ValueError(f"{key} must be an integer >= {_MINIMUM[key]}, got {value!r}")


def _default_nlist(n: int) -> int:
    """``4 sqrt(n)`` lists, but at least 39 training vectors per list (FAISS's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def _default_pq_m(dim: int) -> int:
    """Largest divisor of ``dim`` giving sub-vectors of at least 8 dimensions (at most 64)."""
    for m in range(min(64, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


class DenseIndex:
    """Inner-product search over float32 vectors; ``search`` returns ``(ids, scores)`` ``(nq, k)``."""

    FORMAT = "lsr.dense"
    VERSION = 1
    #: a filtered search with fewer than this fraction of the vectors allowed scores the
    #: allowed vectors exactly instead of searching the index with a selector
    FILTER_EXACT_BELOW = 0.05

    def __init__(self, faiss_index: Any, index_type: str, params: dict[str, Any],
                 doc_ids: Sequence[str] | np.ndarray | None = None, use_gpu: bool | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        self.index_type = index_type
        self.params = dict(params)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._cpu = faiss_index
        n = int(faiss_index.ntotal)
        if doc_ids is None:
            doc_ids = [str(i) for i in range(n)]
        doc_ids = np.asarray([str(x) for x in doc_ids], dtype=object)
        if doc_ids.shape != (n,):
            raise ValueError(f"{doc_ids.size} doc_ids for {n} vectors")
        self.doc_ids = doc_ids
        self._apply_search_params(self._cpu)
        self.on_gpu = False
        self._search_index = self._cpu
        if use_gpu is None:
            use_gpu = index_type != "hnsw" and faiss_gpu_available()
        if use_gpu:
            self._to_gpu()

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, vectors: np.ndarray, doc_ids: Sequence[str] | None = None, index_type: str = "flat",
              use_gpu: bool | None = None, metadata: dict[str, Any] | None = None,
              **params: Any) -> "DenseIndex":
        """Index the rows of ``vectors`` (``(n, dim)``, converted to float32).

        Parameters (defaults in ``DEFAULTS``): ``hnsw_m``, ``ef_construction``, ``ef_search``
        (HNSW); ``nlist`` (default ``4 sqrt(n)``, at most ``n / 39``), ``nprobe`` (default ``nlist // 4``, at least
        16) for IVF; ``pq_m`` (sub-quantizers, a divisor of dim) and ``pq_bits`` for IVF-PQ.
        """
        faiss = import_faiss()
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown index parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        _check_params(params)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"vectors must be a 2-D (n, dim) array, got shape {x.shape}")
        if x.size and not np.all(np.isfinite(x)):
            raise ValueError("vectors must be finite (found NaN or inf)")
        if doc_ids is not None:
            doc_ids = [str(i) for i in doc_ids]
            if len(doc_ids) != x.shape[0]:
                raise ValueError(f"{len(doc_ids)} doc_ids for {x.shape[0]} vectors")
            if len(set(doc_ids)) != len(doc_ids):
                seen: set[str] = set()
                dup = next(i for i in doc_ids if i in seen or seen.add(i))
                raise ValueError(f"duplicate document id {dup!r}")
        n, dim = x.shape
        p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
        metric = faiss.METRIC_INNER_PRODUCT
        if index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(p["hnsw_m"]), metric)
            index.hnsw.efConstruction = int(p["ef_construction"])
        else:
            if n == 0:
                raise ValueError(f"an {index_type} index needs training vectors")
            p["nlist"] = int(p["nlist"] or _default_nlist(n))
            if p["nlist"] > n:
                raise ValueError(f"nlist={p['nlist']} is more than the {n} training vectors")
            p["nprobe"] = int(p["nprobe"] or min(p["nlist"], max(16, p["nlist"] // 4)))
            quantizer = faiss.IndexFlatIP(dim)
            if index_type == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, p["nlist"], metric)
            else:
                p["pq_m"] = int(p["pq_m"] or _default_pq_m(dim))
                if dim % p["pq_m"]:
                    raise ValueError(f"pq_m={p['pq_m']} must divide the dimension {dim}")
                p["pq_bits"] = int(min(p["pq_bits"], max(1, int(math.log2(n)))))
                index = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["pq_m"], p["pq_bits"], metric)
            index.train(x)
        if n:
            index.add(x)
        p = {k: v for k, v in p.items() if v is not None and _relevant(index_type, k)}
        return cls(index, index_type, p, doc_ids, use_gpu=use_gpu, metadata=metadata)

    def _apply_search_params(self, index: Any) -> None:
        faiss = import_faiss()
        if self.index_type == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = int(self.params.get("ef_search", DEFAULTS["ef_search"]))
        elif self.index_type in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(index).nprobe = int(self.params["nprobe"])

    def _to_gpu(self) -> None:
        faiss = import_faiss()
        if self.index_type == "hnsw":
            raise ValueError("FAISS has no GPU HNSW; use flat, ivf or ivfpq on the GPU")
        if not faiss_gpu_available():
            raise RuntimeError("use_gpu=True but FAISS has no GPU support or sees no GPU "
                               "(pip install faiss-gpu-cu12)")
        self._gpu_resources = faiss.StandardGpuResources()
        self._search_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._cpu)
        if self.index_type in ("ivf", "ivfpq"):
            self._search_index.nprobe = int(self.params["nprobe"])
        self.on_gpu = True

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self._cpu.d)

    def __len__(self) -> int:
        return int(self._cpu.ntotal)

    def __repr__(self) -> str:
        return (f"DenseIndex(n={len(self)}, dim={self.dim}, type={self.index_type!r}, "
                f"params={self.params}, gpu={self.on_gpu})")

    # ------------------------------------------------------------------ search
    def flat_vectors(self) -> np.ndarray | None:
        """The stored vectors as an ``(n, dim)`` float32 view (no copy) of a CPU flat index, else None."""
        if self.index_type != "flat" or self.on_gpu:
            return None
        faiss = import_faiss()
        index = self._cpu
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)

    def reconstruct(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors of ``positions`` as ``(len(positions), dim)`` float32 (decoded for
        compressed index types)."""
        positions = np.asarray(positions, dtype=np.int64).ravel()
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise ValueError(f"positions must lie in [0, {len(self)})")
        if not positions.size:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cpu.reconstruct(int(i)) for i in positions])

    def search(self, queries: np.ndarray, k: int = 10, threads: int = 1,
               allowed: np.ndarray | None = None) -> SearchResults:
        """Top-``k`` by inner product: :class:`~lsr.types.SearchResults` of shape ``(nq, min(k, n))``,
        best first, padded with ``-1`` / ``0.0`` where an approximate index finds fewer.

        ``allowed`` (bool, or uint8 with non-zero = allowed, one per vector; ``None``: all)
        restricts the results to those positions. A flat index returns the exact top-``k`` among
        them; HNSW and IVF search with a FAISS ``IDSelectorBitmap``. With fewer than
        ``FILTER_EXACT_BELOW x n`` vectors allowed, on the GPU (GPU FAISS has no selectors) and
        for every query the selector search leaves with fewer than ``min(k, allowed count)``
        results, the allowed vectors are scored exactly instead (on the CPU, with one matrix
        product; HNSW and IVF vectors as ``reconstruct`` gives them, IVF-PQ's decoded), ties to
        the lower position; so ``k`` results come back whenever ``k`` vectors are allowed.
        """
        faiss = import_faiss()
        k = positive_int(k, "k")
        threads = positive_int(threads, "threads")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (nq, {self.dim}), got {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("queries must be finite (found NaN or inf)")
        mask = check_allowed(allowed, len(self))
        nq = q.shape[0]
        k = kk = min(k, len(self))  # k beyond the corpus is capped, not allocated
        ids = np.full((nq, k), -1, dtype=np.int64)
        scores = np.zeros((nq, k), dtype=np.float32)
        if nq == 0 or kk == 0:
            return SearchResults(ids, scores, self.doc_ids)
        if mask is not None and not mask.all():
            self._search_allowed(q, mask, k, threads, ids, scores)
            return SearchResults(ids, scores, self.doc_ids)
        if self.on_gpu:
            kk = min(kk, 2048)  # FAISS GPU limit on k
        with _THREADS_LOCK:
            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(int(threads))
            try:
                d, i = self._search_index.search(q, kk)
            finally:
                faiss.omp_set_num_threads(before)
        valid = i >= 0
        ids[:, :kk] = np.where(valid, i, -1)
        scores[:, :kk] = np.where(valid, d, 0.0)
        return SearchResults(ids, scores, self.doc_ids)

    def _search_allowed(self, q: np.ndarray, mask: np.ndarray, k: int, threads: int, ids: np.ndarray,
                        scores: np.ndarray) -> None:
        """:meth:`search` restricted to ``mask`` (see there) into ``ids`` / ``scores`` (padded)."""
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return
        if self.on_gpu or rows.size < self.FILTER_EXACT_BELOW * len(self):
            self._exact_over(q, rows, k, ids, scores)
            return
        faiss = import_faiss()
        bitmap = np.packbits(mask, bitorder="little")  # IDSelectorBitmap: bit i & 7 of byte i >> 3
        sel = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bitmap))
        if self.index_type == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=int(self.params.get("ef_search",
                                                                                  DEFAULTS["ef_search"])))
        elif self.index_type == "flat":
            params = faiss.SearchParameters(sel=sel)
        else:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(self.params["nprobe"]))
        with _THREADS_LOCK:
            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(int(threads))
            try:
                d, i = self._cpu.search(q, k, params=params)
            finally:
                faiss.omp_set_num_threads(before)
        valid = i >= 0
        ids[:] = np.where(valid, i, -1)
        scores[:] = np.where(valid, d, 0.0)
        short = np.flatnonzero(valid.sum(axis=1) < min(k, rows.size))
        if short.size:  # the graph or the probed lists held too few allowed vectors
            self._exact_over(q[short], rows, k, ids, scores, out_rows=short)

    def _exact_over(self, q: np.ndarray, rows: np.ndarray, k: int, ids: np.ndarray, scores: np.ndarray,
                    out_rows: np.ndarray | None = None) -> None:
        """Exact top-``k`` of ``q`` among the vectors at ``rows`` (ascending; ties to the lower
        position) into ``ids`` / ``scores`` (their rows ``out_rows``, default all)."""
        out_rows = np.arange(q.shape[0]) if out_rows is None else out_rows
        kk = min(k, rows.size)
        step = max(1, (1 << 24) // rows.size)  # about 64 MB of scores at a time
        x = self._vectors_at(rows)
        for a in range(0, q.shape[0], step):
            s = q[a:a + step] @ x.T
            for j in range(s.shape[0]):
                row = s[j]
                kth = -np.partition(-row, kk - 1)[kk - 1] if kk < row.size else -np.inf
                cand = np.flatnonzero(row >= kth)
                top = cand[np.lexsort((cand, -row[cand]))][:kk]
                o = out_rows[a + j]
                ids[o, :kk], scores[o, :kk] = rows[top], row[top]
                ids[o, kk:], scores[o, kk:] = -1, 0.0

    def _vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of the positions ``rows`` (float32 ``(len(rows), dim)``): a gather
        from a flat index's data, else FAISS ``reconstruct`` (IVF lists read by offset, so the
        index needs no direct map and is not modified)."""
        faiss = import_faiss()
        if self.index_type == "flat":
            index = self._cpu
            flat = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
            return flat[rows]
        if self.index_type == "hnsw":
            return self._cpu.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))
        ivf = faiss.extract_index_ivf(self._cpu)
        where = self._ivf_positions(ivf)
        out = np.empty((rows.size, self.dim), np.float32)
        for i, r in enumerate(rows.tolist()):
            ivf.reconstruct_from_offset(int(where[0, r]), int(where[1, r]), faiss.swig_ptr(out[i]))
        return out

    def _ivf_positions(self, ivf: Any) -> np.ndarray:
        """``(2, n)`` int64: the inverted list and offset of every vector (made once, cached)."""
        with _THREADS_LOCK:
            if getattr(self, "_ivf_where", None) is None:
                faiss = import_faiss()
                where = np.full((2, len(self)), -1, dtype=np.int64)
                lists = ivf.invlists
                for li in range(ivf.nlist):
                    size = lists.list_size(li)
                    if size:
                        got = faiss.rev_swig_ptr(lists.get_ids(li), size).copy()
                        where[0, got], where[1, got] = li, np.arange(size)
                self._ivf_where = where
            return self._ivf_where

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the index to directory ``path`` atomically."""
        with atomic_directory(path, self.FORMAT, overwrite=overwrite) as tmp:
            self._write(tmp)

    def _write(self, directory: Path) -> None:
        faiss = import_faiss()
        faiss.write_index(self._cpu, str(directory / FAISS_FILE))
        save_ids(directory, "doc_ids.parquet", self.doc_ids)
        write_manifest(directory, self.FORMAT, self.VERSION, {
            "n_vectors": len(self), "dim": self.dim, "metric": "inner_product", "dtype": "float32",
            "index_type": self.index_type, "params": self.params, "metadata": self.metadata})

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True,
             use_gpu: bool | None = None) -> "DenseIndex":
        """Open an index directory; ``mmap`` memory-maps flat and IVF data (FAISS ``IO_FLAG_MMAP``)."""
        faiss = import_faiss()
        path = resolve_dir(path)
        m = read_manifest(path, cls.FORMAT, cls.VERSION, verify=verify, required=(FAISS_FILE, "doc_ids.parquet"))
        where = path / "manifest.json"
        n, dim, index_type = field_int(m, "n_vectors", where), field_int(m, "dim", where), field_str(m, "index_type", where)
        params = dict(field_dict(m, "params", where))
        field_dict(m, "metadata", where)
        if index_type not in INDEX_TYPES:
            raise IndexFormatError(f"{path}/manifest.json: unknown index_type {index_type!r}")
        flags = faiss.IO_FLAG_MMAP if (mmap and index_type != "hnsw") else 0
        try:
            index = faiss.read_index(str(path / FAISS_FILE), flags)
        except RuntimeError as exc:
            raise IndexFormatError(f"{path}/{FAISS_FILE}: unreadable FAISS index ({exc})") from exc
        if int(index.ntotal) != n or int(index.d) != dim:
            raise IndexFormatError(f"{path}/{FAISS_FILE}: {index.ntotal} vectors of dimension {index.d}, "
                                   f"manifest says {n} of dimension {dim}")
        expected = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSW, "ivf": faiss.IndexIVFFlat,
                    "ivfpq": faiss.IndexIVFPQ}[index_type]
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexFormatError(f"{path}/{FAISS_FILE}: a {type(index).__name__} (metric {index.metric_type}), "
                                   f"manifest.json says an inner-product {index_type} index")
        try:
            _check_params(params)
            if index_type in ("ivf", "ivfpq") and "nprobe" not in params:
                raise ValueError("no nprobe")
        except ValueError as exc:
            raise IndexFormatError(f"{path}/manifest.json: bad params ({exc})") from exc
        return cls(index, index_type, params, load_ids(path, "doc_ids.parquet", n), use_gpu=use_gpu,
                   metadata=m.get("metadata") or {})


def _relevant(index_type: str, key: str) -> bool:
    return {"hnsw_m": "hnsw", "ef_construction": "hnsw", "ef_search": "hnsw", "nlist": "ivf",
            "nprobe": "ivf", "pq_m": "ivfpq", "pq_bits": "ivfpq"}[key] in (
        index_type, "ivf" if index_type == "ivfpq" else None)
