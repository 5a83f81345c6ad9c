"""Numba kernels of the inverted index. Private: use :class:`lsr.InvertedIndex`.

All kernels take contiguous arrays and scalars only, allocate per thread (never per posting)
and release the GIL. Ties are broken towards the lower document position, so results are
deterministic and independent of the number of threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _better(s1, d1, s2, d2):
    # Is (s1, d1) ranked before (s2, d2)? Higher score first, then lower position.
    return s1 > s2 or (s1 == s2 and d1 < d2)


@njit(inline="always")
def _sift_down(hs, hd, n, i):
    # Min-heap on rank order: the root is the worst of the kept candidates.
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        worst = left
        right = left + 1
        if right < n and _better(hs[left], hd[left], hs[right], hd[right]):
            worst = right
        if _better(hs[i], hd[i], hs[worst], hd[worst]):
            hs[i], hs[worst] = hs[worst], hs[i]
            hd[i], hd[worst] = hd[worst], hd[i]
            i = worst
        else:
            break


@njit(inline="always")
def _sift_up(hs, hd, i):
    while i > 0:
        parent = (i - 1) // 2
        if _better(hs[parent], hd[parent], hs[i], hd[i]):
            hs[i], hs[parent] = hs[parent], hs[i]
            hd[i], hd[parent] = hd[parent], hd[i]
            i = parent
        else:
            break


@njit(inline="always")
def _push(hs, hd, n, k, s, d):
    """Offer candidate (s, d) to a heap holding n of at most k entries; return the new size."""
    if n < k:
        hs[n] = s
        hd[n] = d
        _sift_up(hs, hd, n)
        return n + 1
    if _better(s, d, hs[0], hd[0]):
        hs[0] = s
        hd[0] = d
        _sift_down(hs, hd, n, 0)
    return n


@njit(inline="always")
def _drain(hs, hd, n, k, out_ids, out_scores):
    """Write the heap best-first into the output row, padding with -1 / 0."""
    for pos in range(k - 1, -1, -1):
        if pos >= n:
            out_ids[pos] = -1
            out_scores[pos] = 0.0
            continue
        out_ids[pos] = hd[0]
        out_scores[pos] = hs[0]
        hs[0] = hs[pos]  # heap size is pos + 1: move the last entry to the root
        hd[0] = hd[pos]
        _sift_down(hs, hd, pos, 0)


@njit(nogil=True, cache=True)
def _one_query(
    qi, qw, offsets, post_docs, post_w, vocab_size, positive_index, k, acc, seen, touched, hs, hd,
    out_ids, out_scores,
):
    """Term-at-a-time accumulation of one query into a dense accumulator, then heap top-k.

    When every weight involved is positive, a document matches iff its score is > 0, so the
    candidates are found by scanning the accumulator over the touched document range
    (branch-light, no bookkeeping per posting). Otherwise touched documents are tracked
    explicitly so that matches with a zero or negative total are still returned.
    """
    positive = positive_index
    lo = acc.size
    hi = -1
    for j in range(qi.size):
        t = qi[j]
        if t < 0 or t >= vocab_size or qw[j] == 0.0:
            continue
        if qw[j] < 0.0:
            positive = False
        a, b = offsets[t], offsets[t + 1]
        if a < b:
            lo = min(lo, post_docs[a])
            hi = max(hi, post_docs[b - 1])
    n = 0
    if positive:
        for j in range(qi.size):
            t = qi[j]
            w = qw[j]
            if t < 0 or t >= vocab_size or w == 0.0:
                continue
            for p in range(offsets[t], offsets[t + 1]):
                acc[post_docs[p]] += w * post_w[p]
        # Ascending scan: an equal score never beats a kept (lower) position, so a strict
        # comparison with the current k-th score is exact and keeps the hot loop branch-light.
        threshold = np.float32(0.0)
        for d in range(lo, hi + 1):
            s = acc[d]
            if s > threshold:
                n = _push(hs, hd, n, k, s, d)
                if n == k:
                    threshold = hs[0]
        if hi >= lo:
            acc[lo : hi + 1] = 0.0
    else:
        nt = 0
        for j in range(qi.size):
            t = qi[j]
            w = qw[j]
            if t < 0 or t >= vocab_size or w == 0.0:
                continue
            for p in range(offsets[t], offsets[t + 1]):
                d = post_docs[p]
                if seen[d] == 0:
                    seen[d] = 1
                    touched[nt] = d
                    nt += 1
                acc[d] += w * post_w[p]
        for i in range(nt):
            d = touched[i]
            s = acc[d]
            acc[d] = 0.0
            seen[d] = 0
            n = _push(hs, hd, n, k, s, d)
    _drain(hs, hd, n, k, out_ids, out_scores)


@njit(nogil=True, cache=True)
def search_serial(
    q_indptr, q_indices, q_data, offsets, post_docs, post_w, n_docs, positive, k, out_ids, out_scores
):
    vocab_size = offsets.size - 1
    acc = np.zeros(n_docs, np.float32)
    seen = np.zeros(n_docs, np.uint8)
    touched = np.empty(n_docs, np.int32)
    hs = np.empty(k, np.float32)
    hd = np.empty(k, np.int64)
    for q in range(q_indptr.size - 1):
        a, b = q_indptr[q], q_indptr[q + 1]
        _one_query(
            q_indices[a:b], q_data[a:b], offsets, post_docs, post_w, vocab_size, positive, k,
            acc, seen, touched, hs, hd, out_ids[q], out_scores[q],
        )


@njit(nogil=True, parallel=True, cache=True)
def search_parallel(
    q_indptr, q_indices, q_data, offsets, post_docs, post_w, n_docs, positive, k, n_chunks, out_ids, out_scores
):
    vocab_size = offsets.size - 1
    nq = q_indptr.size - 1
    for c in prange(n_chunks):
        acc = np.zeros(n_docs, np.float32)
        seen = np.zeros(n_docs, np.uint8)
        touched = np.empty(n_docs, np.int32)
        hs = np.empty(k, np.float32)
        hd = np.empty(k, np.int64)
        for q in range(c, nq, n_chunks):
            a, b = q_indptr[q], q_indptr[q + 1]
            _one_query(
                q_indices[a:b], q_data[a:b], offsets, post_docs, post_w, vocab_size, positive, k,
                acc, seen, touched, hs, hd, out_ids[q], out_scores[q],
            )


@njit(nogil=True, cache=True)
def check_postings(offsets, post_docs, n_docs):
    """Return -1 if postings are well formed, else the first bad posting position."""
    if offsets[0] != 0:
        return 0
    for t in range(offsets.size - 1):
        a, b = offsets[t], offsets[t + 1]
        if b < a:
            return a
        prev = -1
        for p in range(a, b):
            d = post_docs[p]
            if d <= prev or d >= n_docs:
                return p
            prev = d
    return -1
