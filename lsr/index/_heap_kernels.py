"""The bounded top-k heap every search kernel shares, and the numba thread settings.

The heap keeps the ``k`` best ``(score, position)`` pairs with the worst at the root; ties go
to the lower position, so results do not depend on the order documents are visited in or on
the number of threads. Private: the kernels of ``lsr.index`` inline these functions.
"""
from __future__ import annotations

import threading

import numba
import numpy as np  # noqa: F401  (used inside the compiled functions' type inference)
from numba import njit

# numba's default 'workqueue' threading layer cannot run two parallel regions at once
PARALLEL_LOCK = threading.Lock()


def max_threads() -> int:
    """The most threads a parallel kernel can use (numba's pool size)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_threads(threads: int) -> int:
    """Set numba's thread count for the next parallel kernel (hold :data:`PARALLEL_LOCK`);
    returns the count actually used (at least 1, at most :func:`max_threads`)."""
    n = max(1, min(int(threads), max_threads()))
    numba.set_num_threads(n)
    return n


@njit(inline="always")
def _better(s1, d1, s2, d2):
    """Is (s1, d1) ranked before (s2, d2)? Higher score first, then lower position."""
    return s1 > s2 or (s1 == s2 and d1 < d2)


@njit(inline="always")
def _sift_down(hs, hd, n, i):
    """Restore the heap order of ``hs`` / ``hd[:n]`` below entry ``i`` (moving it down).

    Min-heap on rank order: the root is the worst of the kept candidates."""
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
    """Restore the heap order of ``hs`` / ``hd`` above entry ``i`` (moving it up)."""
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
