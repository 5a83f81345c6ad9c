"""Compact multi-vector storage and exact MaxSim (late-interaction / Chamfer) scoring.

A set of multi-vectors is one flat ``(total_tokens, dim)`` matrix plus ``int64`` offsets
(``vectors[offsets[i]:offsets[i+1]]`` belongs to item ``i``). Documents are stored in float16
and memory-mapped; brute force widens blocks to float32, scores all query tokens of a batch
against a block with one BLAS product and reduces it (max per document, sum per query) with a
Numba kernel while it is in cache, so it runs near the CPU's matrix-product peak.

MaxSim(q, d) = sum over query vectors of the maximum inner product with any document vector.

>>> import numpy as np
>>> docs = MultiVectors.from_list([np.eye(2, dtype=np.float32), np.array([[0.6, 0.8]], np.float32)])
>>> q = MultiVectors.from_list([np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)])
>>> ids, scores = maxsim_search(q, docs, k=2)
>>> ids.tolist(), [[round(float(s), 3) for s in row] for row in scores]
([[0, 1]], [[2.0, 1.4]])
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lsr.index._format import IndexFormatError, load_array, positive_int, save_array

__all__ = ["MultiVectors", "maxsim_scores", "maxsim_search", "maxsim_rerank"]

BLOCK_TOKENS = 16384  # at most this many document tokens per matrix product
QUERY_TOKENS = 4096  # query tokens scored together per matrix product
SIMS_FLOATS = 1 << 24  # similarities per product (64 MB: larger blocks keep BLAS at its peak)


@dataclass
class MultiVectors:
    """Variable-length sets of vectors: flat ``vectors (total, dim)`` and ``offsets (n + 1,)``."""

    vectors: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (total_tokens, dim), got shape {self.vectors.shape}")
        if self.offsets.dtype != np.int64 or self.offsets.ndim != 1 or self.offsets.size < 1:
            raise ValueError("offsets must be a non-empty 1-D int64 array")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.vectors.shape[0]:
            raise ValueError(f"offsets must run from 0 to {self.vectors.shape[0]}, "
                             f"got {int(self.offsets[0])}..{int(self.offsets[-1])}")
        if self.offsets.size > 1 and np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")

    @classmethod
    def from_list(cls, items: Sequence[np.ndarray], dtype: np.dtype | type = np.float32,
                  dim: int | None = None) -> "MultiVectors":
        """Stack a list of ``(n_i, dim)`` arrays."""
        if not items:
            return cls(np.zeros((0, dim or 0), dtype=dtype), np.zeros(1, np.int64))
        dims = {np.asarray(x).shape[1] for x in items}
        if len(dims) != 1:
            raise ValueError(f"all items need the same dimension, got {sorted(dims)}")
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(x) for x in items], out=offsets[1:])
        return cls(np.concatenate([np.asarray(x, dtype=dtype) for x in items]), offsets)

    @classmethod
    def concat(cls, parts: Sequence["MultiVectors"]) -> "MultiVectors":
        if not parts:
            raise ValueError("nothing to concatenate")
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += p.vectors.shape[0]
        return cls(np.concatenate([p.vectors for p in parts]), np.concatenate(offsets))

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i]:self.offsets[i + 1]]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def astype(self, dtype: np.dtype | type) -> "MultiVectors":
        return MultiVectors(np.asarray(self.vectors, dtype=dtype), self.offsets)

    def take(self, positions: Sequence[int]) -> "MultiVectors":
        """The items at ``positions`` as a new (in-memory) set."""
        return MultiVectors.from_list([self[int(i)] for i in positions], dtype=self.vectors.dtype, dim=self.dim)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path, prefix: str = "multivectors") -> dict:
        """Write ``<prefix>.npy`` (float16) and ``<prefix>_offsets.npy``; return manifest fields."""
        save_array(directory, f"{prefix}.npy", np.asarray(self.vectors, dtype=np.float16))
        save_array(directory, f"{prefix}_offsets.npy", self.offsets)
        return {"n_items": len(self), "total_vectors": int(self.vectors.shape[0]), "dim": self.dim,
                "dtype": "float16"}

    @classmethod
    def load(cls, directory: Path, fields: dict, prefix: str = "multivectors", mmap: bool = True) -> "MultiVectors":
        try:
            n, total, dim = int(fields["n_items"]), int(fields["total_vectors"]), int(fields["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{directory}/manifest.json: bad multi-vector fields ({exc})") from exc
        vectors = load_array(directory, f"{prefix}.npy", np.float16, (total, dim), mmap)
        offsets = load_array(directory, f"{prefix}_offsets.npy", np.int64, (n + 1,), mmap)
        try:
            return cls(vectors, np.asarray(offsets))
        except ValueError as exc:
            raise IndexFormatError(f"{directory}/{prefix}_offsets.npy: {exc}") from exc


def _check(queries: MultiVectors, docs: MultiVectors) -> None:
    if not isinstance(queries, MultiVectors) or not isinstance(docs, MultiVectors):
        raise TypeError("queries and documents must be MultiVectors")
    if len(queries) and len(docs) and queries.dim != docs.dim:
        raise ValueError(f"query dimension {queries.dim} != document dimension {docs.dim}")
    if not np.isfinite(queries.vectors).all():
        raise ValueError("query vectors must be finite (found NaN or inf)")


def maxsim_scores(queries: MultiVectors, docs: MultiVectors, block_tokens: int = BLOCK_TOKENS) -> np.ndarray:
    """Exact MaxSim of every query against every document: ``float32 (nq, n_docs)``.

    All query tokens of a group (up to ``QUERY_TOKENS``) are scored against a block of document
    tokens with one BLAS product (float16 stores are widened per block by a Numba kernel); a
    Numba kernel then takes the maximum over each document's rows and sums it over each query's
    columns, while the block is still in cache. Documents without vectors score ``-inf``;
    queries without vectors score 0 everywhere.
    """
    _check(queries, docs)
    nq, nd = len(queries), len(docs)
    out = np.zeros((nq, nd), dtype=np.float32)
    if nq == 0 or nd == 0:
        return out
    q = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    q_off = np.ascontiguousarray(queries.offsets)
    d_off = np.ascontiguousarray(docs.offsets)
    half = docs.vectors.dtype == np.float16
    # the Numba kernels here are serial: BLAS's threads own the cores
    for g0, g1 in _query_groups(q_off):
        qa, qb = int(q_off[g0]), int(q_off[g1])
        if qb == qa:
            continue
        q_t = q[qa:qb].T
        local_q = np.ascontiguousarray(q_off[g0:g1 + 1] - qa)
        # document blocks: about SIMS_FLOATS similarities (and at most block_tokens tokens) each
        step = max(1, min(int(block_tokens), SIMS_FLOATS // (qb - qa)))
        d0 = 0
        while d0 < nd:
            d1 = max(int(np.searchsorted(d_off, d_off[d0] + step, side="right")) - 1, d0 + 1)
            d1 = min(d1, nd)
            a, b = int(d_off[d0]), int(d_off[d1])
            if b > a:
                if half:
                    block = np.empty((b - a, docs.dim), np.float32)
                    _widen_f16(np.asarray(docs.vectors[a:b]).view(np.uint16), block)
                else:
                    block = np.asarray(docs.vectors[a:b], dtype=np.float32)
                sims = block @ q_t  # (block tokens, group query tokens)
                _segment_max_sum(sims, np.ascontiguousarray(d_off[d0:d1 + 1] - a), local_q, out, g0, d0)
            d0 = d1
    out[:, docs.lengths == 0] = -np.inf
    return out


def _query_groups(q_off: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive query ranges of about ``QUERY_TOKENS`` tokens (at least one query each)."""
    nq, groups, start = q_off.size - 1, [], 0
    while start < nq:
        end = int(np.searchsorted(q_off, q_off[start] + QUERY_TOKENS, side="right")) - 1
        end = min(max(end, start + 1), nq)
        groups.append((start, end))
        start = end
    return groups


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, best first, ties by lower position; non-finite entries (NaN, +-inf) are
    skipped, rows with fewer than ``k`` finite entries are padded with -1 / 0."""
    nq, n = scores.shape
    ids = np.full((nq, k), -1, dtype=np.int64)
    out = np.zeros((nq, k), dtype=np.float32)
    kk = min(k, n)
    if kk == 0:
        return ids, out
    _top_k_rows(np.ascontiguousarray(scores, dtype=np.float32), kk, ids, out)
    return ids, out


def maxsim_search(queries: MultiVectors, docs: MultiVectors, k: int = 10,
                  block_tokens: int = BLOCK_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """Exact brute-force MaxSim top-``k``: ``(ids, scores)`` of shape ``(nq, k)``, padded with -1."""
    k = positive_int(k, "k")
    return _top_k(maxsim_scores(queries, docs, block_tokens), k)


def maxsim_rerank(queries: MultiVectors, docs: MultiVectors, candidates: np.ndarray,
                  k: int = 10, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate positions (``(nq, c)``, ``-1`` = none) by exact MaxSim; keep the top ``k``.

    The (query, candidate) pairs of the batch are grouped by document, so a Numba kernel reads
    (and widens, for a float16 store) each candidate document once for all the queries that
    retrieved it. Duplicate candidates count once; candidates without vectors are dropped.
    """
    _check(queries, docs)
    candidates = np.asarray(candidates)
    if candidates.size and not np.issubdtype(candidates.dtype, np.integer):
        raise TypeError(f"candidates must be integer positions, got dtype {candidates.dtype}")
    candidates = candidates.astype(np.int64, copy=False)
    if candidates.ndim != 2 or candidates.shape[0] != len(queries):
        raise ValueError(f"candidates must have shape ({len(queries)}, c), got {candidates.shape}")
    k = positive_int(k, "k")
    if candidates.size and (int(candidates.max()) >= len(docs) or int(candidates.min()) < -1):
        bad = int(candidates.max()) if int(candidates.max()) >= len(docs) else int(candidates.min())
        raise ValueError(f"candidate position {bad} out of range for {len(docs)} documents (-1 = none)")
    nq = len(queries)
    ids = np.full((nq, k), -1, dtype=np.int64)
    scores = np.zeros((nq, k), dtype=np.float32)
    if nq == 0 or candidates.shape[1] == 0:
        return ids, scores
    cand = np.sort(candidates, axis=1)
    cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1  # duplicates count once
    lens = np.where(cand >= 0, docs.offsets[cand + 1] - docs.offsets[np.maximum(cand, 0)], 0)
    cand[lens == 0] = -1
    q = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    # (query, slot) pairs grouped by document: each candidate document is read (and widened) once
    # for all the queries of the batch that retrieved it
    rows, slots = np.nonzero(cand >= 0)
    pair_docs = cand[rows, slots]
    order = np.argsort(pair_docs, kind="stable")
    uniq, starts = np.unique(pair_docs[order], return_index=True)
    groups = np.append(starts, order.size).astype(np.int64)
    pair_q, pair_slot = rows[order].astype(np.int64), slots[order].astype(np.int64)
    q_off = np.ascontiguousarray(queries.offsets)
    d_off = np.ascontiguousarray(docs.offsets)
    uniq = uniq.astype(np.int64)
    max_len = int((d_off[uniq + 1] - d_off[uniq]).max()) if uniq.size else 1
    max_tokens = int(np.add.reduceat(np.diff(q_off)[pair_q], groups[:-1]).max()) if uniq.size else 1
    with _PARALLEL_LOCK:  # numba's default threading layer runs one parallel region at a time
        n_threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n_threads)
        args = (d_off, uniq, groups, pair_q, pair_slot, out, max(max_len, 1), max(max_tokens, 1),
                max(1, min(16 * n_threads, uniq.size)))
        if docs.vectors.dtype == np.float16:
            _rerank_groups(q, q_off, np.asarray(docs.vectors).view(np.uint16), *args)
        else:
            _rerank_groups(q, q_off, np.ascontiguousarray(docs.vectors, dtype=np.float32), *args)
    # rows of cand ascend, so ties by column are ties by document; dropped slots are -inf
    cols = np.full((nq, k), -1, dtype=np.int64)
    _top_k_rows(out, min(k, out.shape[1]), cols, scores)
    ids[cols >= 0] = np.take_along_axis(cand, np.maximum(cols, 0), axis=1)[cols >= 0]
    return ids, scores


_PARALLEL_LOCK = threading.Lock()


# ---------------------------------------------------------------------------- numba kernels
import numba  # noqa: E402  (lsr/__init__ never imports this module eagerly)
import numba.extending  # noqa: E402

from lsr.index._kernels import _drain, _push  # noqa: E402  (the bounded top-k heap)


@numba.njit(cache=True, nogil=True)
def _top_k_rows(scores, k, ids, out):  # pragma: no cover - compiled
    """Per row, the ``k`` best finite scores (higher first, ties to the lower position) into
    ``ids[i, :k]`` / ``out[i, :k]``, padded with -1 / 0: the inverted index's bounded heap."""
    hs = np.empty(k, np.float32)
    hd = np.empty(k, np.int64)
    for i in range(scores.shape[0]):
        n = 0
        row = scores[i]
        for d in range(row.size):
            v = row[d]
            if n == k and not v >= hs[0]:
                continue  # not better than the worst kept (or NaN): most entries stop here
            if abs(v) < np.inf:
                n = _push(hs, hd, n, k, v, d)
        _drain(hs, hd, n, k, ids[i, :k], out[i, :k])


@numba.njit(cache=True, nogil=True, fastmath=True)
def _block_max(d, q, best):  # pragma: no cover - compiled
    """``best[i] = max(best[i], max_t d[t] . q[i])`` in 4 x 4 register tiles (rows of ``d`` and
    ``q`` padded to multiples of 4: ``d`` with copies of a real row, ``q`` with ignored rows)."""
    dim = d.shape[1]
    for i0 in range(0, q.shape[0], 4):
        m0 = m1 = m2 = m3 = np.float32(-np.inf)
        for t0 in range(0, d.shape[0], 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
            for j in range(dim):
                a0, a1, a2, a3 = d[t0, j], d[t0 + 1, j], d[t0 + 2, j], d[t0 + 3, j]
                b0, b1, b2, b3 = q[i0, j], q[i0 + 1, j], q[i0 + 2, j], q[i0 + 3, j]
                s00 += a0 * b0
                s01 += a0 * b1
                s02 += a0 * b2
                s03 += a0 * b3
                s10 += a1 * b0
                s11 += a1 * b1
                s12 += a1 * b2
                s13 += a1 * b3
                s20 += a2 * b0
                s21 += a2 * b1
                s22 += a2 * b2
                s23 += a2 * b3
                s30 += a3 * b0
                s31 += a3 * b1
                s32 += a3 * b2
                s33 += a3 * b3
            m0 = max(m0, s00, s10, s20, s30)
            m1 = max(m1, s01, s11, s21, s31)
            m2 = max(m2, s02, s12, s22, s32)
            m3 = max(m3, s03, s13, s23, s33)
        best[i0] = max(best[i0], m0)
        best[i0 + 1] = max(best[i0 + 1], m1)
        best[i0 + 2] = max(best[i0 + 2], m2)
        best[i0 + 3] = max(best[i0 + 3], m3)


@numba.njit(cache=True, nogil=True)
def _gather_queries(q, q_off, pair_q, p0, p1, qg):  # pragma: no cover - compiled
    """Stack the query vectors of pairs ``p0..p1`` into ``qg``, zero rows up to a multiple of 4;
    return the padded row count."""
    k = 0
    for p in range(p0, p1):
        for i in range(q_off[pair_q[p]], q_off[pair_q[p] + 1]):
            qg[k] = q[i]
            k += 1
    m = (k + 3) // 4 * 4
    qg[k:m] = 0.0
    return m


@numba.njit(cache=True, nogil=True)
def _group_finish(q_off, pair_q, pair_slot, p0, p1, best, out):  # pragma: no cover - compiled
    k = 0
    for p in range(p0, p1):
        qi = pair_q[p]
        total = np.float32(0.0)
        for _ in range(q_off[qi], q_off[qi + 1]):
            total += best[k]
            k += 1
        out[qi, pair_slot[p]] = total


@numba.njit(cache=True, nogil=True, parallel=True)
def _rerank_groups(q, q_off, vectors, d_off, docs, groups, pair_q, pair_slot, out,
                   max_len, max_tokens, n_chunks):  # pragma: no cover - compiled
    """``out[pair_q[p], pair_slot[p]]`` = MaxSim of query ``pair_q[p]`` and document ``docs[g]``
    for the pairs ``p`` of group ``g``. Each document is read (float16 bits: widened by
    :func:`_half_to_float`) once for its whole group. Groups are split into ``n_chunks`` ranges, each with
    its own scratch buffers (no allocation per document)."""
    dim = vectors.shape[1]
    per = (docs.size + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        block = np.empty(((max_len + 3) // 4 * 4, dim), np.float32)
        qg = np.empty(((max_tokens + 3) // 4 * 4, dim), np.float32)
        best = np.empty(qg.shape[0], np.float32)
        for g in range(c * per, min((c + 1) * per, docs.size)):
            doc, p0, p1 = docs[g], groups[g], groups[g + 1]
            m = _gather_queries(q, q_off, pair_q, p0, p1, qg)
            a, n = d_off[doc], d_off[doc + 1] - d_off[doc]
            rows = (n + 3) // 4 * 4
            for t in range(rows):
                _load_row(vectors, a + min(t, n - 1), block[t])  # padding repeats the last row
            best[:m] = -np.inf
            _block_max(block[:rows], qg[:m], best[:m])
            _group_finish(q_off, pair_q, pair_slot, p0, p1, best, out)


def _load_row(vectors, t, row):  # pragma: no cover - replaced by the overload in kernels
    """``row = float32(vectors[t])``; float16 stores come as their uint16 bits."""
    row[:] = vectors[t].view(np.float16) if vectors.dtype == np.uint16 else vectors[t]


@numba.extending.overload(_load_row, jit_options={"cache": True, "nogil": True})
def _load_row_impl(vectors, t, row):  # pragma: no cover - compiled
    if vectors.dtype == numba.types.uint16:
        def widen(vectors, t, row):
            _half_to_float(vectors[t], row)
        return widen

    def copy(vectors, t, row):
        for j in range(row.size):
            row[j] = vectors[t, j]
    return copy


@numba.njit(cache=True, nogil=True)
def _half_to_float(src, row):  # pragma: no cover - compiled
    """``row = float32(float16 bits src)``, exact for every bit pattern, by integer arithmetic
    (Numba has no float16; a 64k-entry table lookup is about 2x slower).

    Exponent and mantissa are shifted into place and the exponent re-biased (+112); infinities
    and NaNs get the all-ones exponent; zeros and subnormals are built as ``2**-14 * (1 + m/1024)``
    and then ``2**-14`` is subtracted in float arithmetic, which is exact; the sign goes last.
    """
    bits = row.view(np.uint32)
    for j in range(row.size):
        em = np.uint32(src[j]) & np.uint32(0x7FFF)
        b = (em << np.uint32(13)) + np.uint32(112 << 23)
        if em >= np.uint32(0x7C00):
            b += np.uint32(112 << 23)
        elif em < np.uint32(0x0400):
            b += np.uint32(1 << 23)
        bits[j] = b
    for j in range(row.size):
        h = np.uint32(src[j])
        f = row[j]
        if (h & np.uint32(0x7C00)) == np.uint32(0):
            f -= np.float32(6.103515625e-05)
        if h & np.uint32(0x8000):
            f = -f
        row[j] = f


@numba.njit(cache=True, nogil=True)
def _widen_f16(bits, out):  # pragma: no cover - compiled
    """``out = float32(float16 bits)`` row by row (serial: BLAS owns the cores)."""
    for t in range(bits.shape[0]):
        _half_to_float(bits[t], out[t])


@numba.njit(cache=True, nogil=True)
def _segment_max_sum(sims, d_starts, q_off, out, row0, col0):  # pragma: no cover - compiled
    """``out[row0 + q, col0 + d]`` = sum over query ``q``'s columns of the max over document ``d``'s rows."""
    n_docs, n_cols, n_q = d_starts.size - 1, sims.shape[1], q_off.size - 1
    for d in range(n_docs):
        a, b = d_starts[d], d_starts[d + 1]
        if b == a:
            continue
        best = sims[a].copy()
        for t in range(a + 1, b):
            for j in range(n_cols):
                v = sims[t, j]
                if v > best[j]:
                    best[j] = v
        for i in range(n_q):
            total = np.float32(0.0)
            for j in range(q_off[i], q_off[i + 1]):
                total += best[j]
            out[row0 + i, col0 + d] = total


def save_multivectors(directory: str | os.PathLike, mv: MultiVectors, prefix: str = "multivectors") -> dict:
    """Convenience wrapper of :meth:`MultiVectors.save` for a path."""
    return mv.save(Path(directory), prefix)
