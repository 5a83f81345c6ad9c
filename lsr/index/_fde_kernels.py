"""Numba kernels of MUVERA's fixed-dimensional encodings. Private: use :mod:`lsr.index.muvera`."""
from __future__ import annotations

import numba

@numba.njit(cache=True, nogil=True)
def _scatter_sum(x, item, labels, targets, signs, out):  # pragma: no cover - compiled
    """``out[item[t], r, labels[t, r], targets[r, i]] += signs[r, i] * x[t, i]`` (query FDE blocks)."""
    for t in range(x.shape[0]):
        for r in range(labels.shape[1]):
            block = out[item[t], r, labels[t, r]]
            for i in range(x.shape[1]):
                block[targets[r, i]] += signs[r, i] * x[t, i]


@numba.njit(cache=True, nogil=True, parallel=True)
def _ams_project(x, target, sign, out):  # pragma: no cover - compiled
    """``out[t, target[i]] += sign[i] * x[t, i]``: the AMS sketch without a dense matrix."""
    for t in numba.prange(x.shape[0]):
        for i in range(x.shape[1]):
            out[t, target[i]] += sign[i] * x[t, i]

