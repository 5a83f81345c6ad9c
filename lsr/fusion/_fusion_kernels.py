"""Numba kernels of the fusion layer (private; wrapped by :mod:`lsr.fusion.combine`).

They work on integer document ids and float scores only. ``ids`` of a run are padded per
query with ``-1``; every id is a non-negative int64 whose order is the order of the external
document ids (so "id descending" breaks ties exactly as trec_eval does).

Each kernel has a serial and a ``prange`` driver over queries around one per-query function:
small batches (a RAG pipeline's single question) skip the thread pool, whose start-up costs
more than the work.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

PARALLEL_MIN_QUERIES = 64


@njit(cache=True, nogil=True)
def _union_one(ids, n, q, start, cand_ids, cand_pos):
    """Write query q's distinct ids (ascending) at ``start``; ``cand_pos[u, r]`` = position of
    candidate u in run r. Returns the number of distinct ids.

    One sort of packed keys ``(id * R + r) * K + position`` (the wrapper checks they fit in int64)
    groups equal ids and carries run and position along, with no indirect argsort."""
    R, K = ids.shape[0], ids.shape[2]
    t = 0
    for r in range(R):
        t += n[r, q]
    keys = np.empty(t, dtype=np.int64)
    t = 0
    for r in range(R):
        for j in range(n[r, q]):
            keys[t] = (ids[r, q, j] * R + r) * K + j
            t += 1
    keys.sort()
    u = -1
    prev = -1
    RK = R * K
    for i in range(t):
        key = keys[i]
        d = key // RK
        rest = key - d * RK
        if u < 0 or d != prev:
            u += 1
            prev = d
            cand_ids[start + u] = d
        cand_pos[start + u, rest // K] = rest % K
    return u + 1


@njit(cache=True, nogil=True)
def union_serial(ids, n, starts, cand_ids, cand_pos, counts):
    """ids: (R, nq, K) int64, n: (R, nq) int64, starts: (nq,) region of each query in the outputs."""
    for q in range(ids.shape[1]):
        counts[q] = _union_one(ids, n, q, starts[q], cand_ids, cand_pos)


@njit(cache=True, nogil=True, parallel=True)
def union_parallel(ids, n, starts, cand_ids, cand_pos, counts):
    """:func:`union_serial` with ``prange`` over queries."""
    for q in prange(ids.shape[1]):
        counts[q] = _union_one(ids, n, q, starts[q], cand_ids, cand_pos)


@njit(cache=True, nogil=True)
def _top_one(indptr, cand_ids, fused, k, q, out_ids, out_scores):
    """Query ``q``'s best ``k`` candidates ``cand_ids[indptr[q]:indptr[q + 1]]`` by fused score
    (descending; ties: id descending) into ``out_ids[q]`` / ``out_scores[q]``."""
    s, e = indptr[q], indptr[q + 1]
    m = e - s
    if m == 0:
        return
    neg = np.empty(m, dtype=np.float64)
    for i in range(m):
        neg[i] = -fused[s + i]
    if k < m:  # sort only the candidates that can make the top k (ties at the boundary included)
        thr = np.partition(neg, k - 1)[k - 1]
        sel = np.flatnonzero(neg <= thr)
        order = sel[np.argsort(neg[sel])]
    else:
        order = np.argsort(neg)
    # equal scores: larger candidate index first (candidates are id-ascending -> id descending)
    c = order.shape[0]
    i = 0
    while i < c:
        j = i + 1
        while j < c and neg[order[j]] == neg[order[i]]:
            j += 1
        if j - i > 1:
            order[i:j] = np.sort(order[i:j])[::-1]
        i = j
    for i in range(min(k, c)):
        out_ids[q, i] = cand_ids[s + order[i]]
        out_scores[q, i] = fused[s + order[i]]


@njit(cache=True, nogil=True)
def top_k_serial(indptr, cand_ids, fused, out_ids, out_scores):
    """Per query the best ``k = out_ids.shape[1]`` by (score desc, id desc); outputs pre-filled."""
    for q in range(indptr.shape[0] - 1):
        _top_one(indptr, cand_ids, fused, out_ids.shape[1], q, out_ids, out_scores)


@njit(cache=True, nogil=True, parallel=True)
def top_k_parallel(indptr, cand_ids, fused, out_ids, out_scores):
    """:func:`top_k_serial` with ``prange`` over queries."""
    for q in prange(indptr.shape[0] - 1):
        _top_one(indptr, cand_ids, fused, out_ids.shape[1], q, out_ids, out_scores)


def union(ids: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate union: ``(indptr, cand_ids, cand_pos)`` (positions -1 where a run lacks the id)."""
    R, nq, K = ids.shape
    if nq and (int(ids.max(initial=0)) + 1) * R * K >= 2 ** 62:
        raise ValueError(f"document ids up to {int(ids.max())} are too large to fuse {R} runs of depth {K}")
    upper = n.sum(axis=0) if nq else np.zeros(0, np.int64)
    starts = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(upper, out=starts[1:])
    cand_ids = np.empty(int(starts[-1]), dtype=np.int64)
    cand_pos = np.full((int(starts[-1]), R), -1, dtype=np.int64)
    counts = np.zeros(nq, dtype=np.int64)
    (union_parallel if nq >= PARALLEL_MIN_QUERIES else union_serial)(ids, n, starts[:-1], cand_ids, cand_pos, counts)
    indptr = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if indptr[-1] != starts[-1]:  # drop the unused tail of each query's region
        keep = np.arange(int(starts[-1])) - np.repeat(starts[:-1], upper) < np.repeat(counts, upper)
        cand_ids, cand_pos = cand_ids[keep], cand_pos[keep]
    return indptr, cand_ids, cand_pos


def top_k(indptr: np.ndarray, cand_ids: np.ndarray, fused: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nq = indptr.shape[0] - 1
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.zeros((nq, k), dtype=np.float64)
    (top_k_parallel if nq >= PARALLEL_MIN_QUERIES else top_k_serial)(indptr, cand_ids, fused, out_ids, out_scores)
    return out_ids, out_scores
