"""Numba kernels of exact MaxSim: block maxima, grouped re-ranking of candidates, float16
widening and the per-row top-k. Private: use :mod:`lsr.index.maxsim`."""
from __future__ import annotations

import numba
import numba.extending
import numpy as np

from lsr.index._heap_kernels import _drain, _push

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
    """``out[pair_q[p], pair_slot[p]]`` = sum of ``best`` over query ``pair_q[p]``'s rows (stacked
    in pair order by :func:`_gather_queries`) for the pairs ``p0..p1``."""
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
    """Compiled :func:`_load_row`: float16 bits widened by :func:`_half_to_float`, else a copy."""
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
    (Numba has no float16; a 64k-entry table lookup measured slower, docs/dense_and_muvera.md).

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
