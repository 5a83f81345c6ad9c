"""Numba kernel of the out-of-core index build. Private: use :func:`lsr.index.build.build_index`."""
from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def _scatter(start, counts, run_docs, run_w, post_docs, post_w):
    """Append each term's run segment at ``start[t]`` of the final lists; advance ``start``."""
    src = 0
    for t in range(counts.size):
        c = counts[t]
        if c == 0:
            continue
        dst = start[t]
        for i in range(c):
            post_docs[dst + i] = run_docs[src + i]
            post_w[dst + i] = run_w[src + i]
        start[t] = dst + c
        src += c
