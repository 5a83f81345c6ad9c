"""Numba kernels of the fusion layer (private; wrapped by :mod:`lsr.hybrid.fusion`).

They work on integer document ids and float scores only. ``ids`` of a run are padded per
query with ``-1``; every id is a non-negative int64 whose order is the order of the external
document ids (so "id descending" breaks ties exactly as trec_eval does).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _query_union(ids, n, q, buf_ids, buf_run, buf_pos):
    """Gather query q's entries of all runs into the buffers sorted by id; return their count."""
    t = 0
    for r in range(ids.shape[0]):
        for j in range(n[r, q]):
            buf_ids[t] = ids[r, q, j]
            buf_run[t] = r
            buf_pos[t] = j
            t += 1
    order = np.argsort(buf_ids[:t], kind="mergesort")
    return t, order


@njit(cache=True, nogil=True, parallel=True)
def count_union(ids, n):
    """Number of distinct ids per query over all runs. ids: (R, nq, K) int64; n: (R, nq) int64."""
    nq = ids.shape[1]
    cap = ids.shape[0] * ids.shape[2]
    out = np.zeros(nq, dtype=np.int64)
    for q in prange(nq):
        buf_ids = np.empty(cap, dtype=np.int64)
        buf_run = np.empty(cap, dtype=np.int64)
        buf_pos = np.empty(cap, dtype=np.int64)
        t, order = _query_union(ids, n, q, buf_ids, buf_run, buf_pos)
        u = 0
        prev = -1
        for i in range(t):
            d = buf_ids[order[i]]
            if i == 0 or d != prev:
                u += 1
                prev = d
        out[q] = u
    return out


@njit(cache=True, nogil=True, parallel=True)
def fill_union(ids, n, indptr, cand_ids, cand_pos):
    """Fill the candidate ids (ascending per query) and, per run, each candidate's 0-based
    position in that run (-1 when the run did not retrieve it)."""
    nq = ids.shape[1]
    cap = ids.shape[0] * ids.shape[2]
    for q in prange(nq):
        buf_ids = np.empty(cap, dtype=np.int64)
        buf_run = np.empty(cap, dtype=np.int64)
        buf_pos = np.empty(cap, dtype=np.int64)
        t, order = _query_union(ids, n, q, buf_ids, buf_run, buf_pos)
        u = indptr[q] - 1
        prev = -1
        for i in range(t):
            o = order[i]
            d = buf_ids[o]
            if i == 0 or d != prev:
                u += 1
                prev = d
                cand_ids[u] = d
            cand_pos[u, buf_run[o]] = buf_pos[o]


@njit(cache=True, nogil=True, parallel=True)
def top_k(indptr, cand_ids, fused, k):
    """Per query, the k best candidates by (score descending, id descending), padded with -1."""
    nq = indptr.shape[0] - 1
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.zeros((nq, k), dtype=np.float64)
    for q in prange(nq):
        s, e = indptr[q], indptr[q + 1]
        m = e - s
        if m == 0:
            continue
        # candidates are sorted by id ascending: reversing gives id descending, and a stable
        # sort on -score keeps that order among equal scores
        rev_scores = np.empty(m, dtype=np.float64)
        for i in range(m):
            rev_scores[i] = -fused[e - 1 - i]
        order = np.argsort(rev_scores, kind="mergesort")
        for i in range(min(k, m)):
            j = e - 1 - order[i]
            out_ids[q, i] = cand_ids[j]
            out_scores[q, i] = fused[j]
    return out_ids, out_scores
