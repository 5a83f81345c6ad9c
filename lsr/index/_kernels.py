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


@njit(nogil=True, cache=True)
def _one_query(
    qi, qw, offsets, post_docs, post_w, vocab_size, k, acc, seen, touched, hs, hd, out_ids, out_scores
):
    """Term-at-a-time accumulation of one query, then heap top-k over touched documents."""
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
    n = 0
    for i in range(nt):
        d = touched[i]
        s = acc[d]
        acc[d] = 0.0
        seen[d] = 0
        if n < k:
            hs[n] = s
            hd[n] = d
            _sift_up(hs, hd, n)
            n += 1
        elif _better(s, d, hs[0], hd[0]):
            hs[0] = s
            hd[0] = d
            _sift_down(hs, hd, n, 0)
    # Pop the worst repeatedly to fill the output from the back.
    for pos in range(k - 1, -1, -1):
        if pos >= n:
            out_ids[pos] = -1
            out_scores[pos] = 0.0
            continue
        out_ids[pos] = hd[0]
        out_scores[pos] = hs[0]
        last = pos  # heap size is pos + 1 here; move the last element to the root
        hs[0] = hs[last]
        hd[0] = hd[last]
        _sift_down(hs, hd, last, 0)


@njit(nogil=True, cache=True)
def search_serial(q_indptr, q_indices, q_data, offsets, post_docs, post_w, n_docs, k, out_ids, out_scores):
    vocab_size = offsets.size - 1
    acc = np.zeros(n_docs, np.float32)
    seen = np.zeros(n_docs, np.uint8)
    touched = np.empty(n_docs, np.int32)
    hs = np.empty(k, np.float32)
    hd = np.empty(k, np.int64)
    for q in range(q_indptr.size - 1):
        a, b = q_indptr[q], q_indptr[q + 1]
        _one_query(
            q_indices[a:b], q_data[a:b], offsets, post_docs, post_w, vocab_size, k,
            acc, seen, touched, hs, hd, out_ids[q], out_scores[q],
        )


@njit(nogil=True, parallel=True, cache=True)
def search_parallel(
    q_indptr, q_indices, q_data, offsets, post_docs, post_w, n_docs, k, n_chunks, out_ids, out_scores
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
                q_indices[a:b], q_data[a:b], offsets, post_docs, post_w, vocab_size, k,
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
