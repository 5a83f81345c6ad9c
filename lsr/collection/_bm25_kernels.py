"""Numba kernel of the collection's BM25 engine: a snapshot's segments, a batch of queries, term at a time.

Private to :mod:`lsr.collection.engines.bm25`. A query's terms are scored in the order given,
each posting's weight ``idf - idf / (1 + tf * inv_norm[doc])`` times the query count added to
the document's float32 accumulator, exactly the float32 operations of the numpy engine (no fast
math, so no fused multiply-add: scores are bit-identical). Only documents the mask allows are
scored. A term whose posting list is long next to the allowed documents is not scanned: each
allowed position is looked up in the (ascending) list by a galloping search instead, so a
selective filter reads ``allowed x log(list)`` entries rather than the whole list. The top ``k``
of the scored documents of all segments (score descending, ties by segment ordinal then
position) come from one bounded heap per query: one call searches the whole snapshot.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from lsr.index._heap_kernels import _drain, _push  # the bounded heap every top-k kernel shares

__all__ = ["search_snapshot", "segment_lists"]


@njit(cache=True, nogil=True)
def _lower_bound(docs: np.ndarray, lo: int, hi: int, d: int) -> int:
    """First index in ``docs[lo:hi]`` (ascending) holding a value >= ``d`` (``hi`` when none),
    galloping from ``lo``: cheap when the answer is near ``lo``."""
    step = 1
    b = lo
    while b < hi and docs[b] < d:
        lo = b + 1
        b = lo + step
        step *= 2
    if b > hi:
        b = hi
    while lo < b:
        mid = (lo + b) // 2
        if docs[mid] < d:
            lo = mid + 1
        else:
            b = mid
    return lo


def segment_lists(offsets: list, docs: list, values: list, values_dtype: Any = np.int32) -> tuple:
    """The segments' arrays (offsets int64, docs int32, per-posting values: BM25's tf, or the
    learned engines' float32 weights) as Numba typed lists (made once per snapshot; no copy)."""
    from numba.typed import List

    out = (List(), List(), List())
    for lst, arrays, dtype in zip(out, (offsets, docs, values), (np.int64, np.int32, values_dtype)):
        for a in arrays:
            lst.append(np.asarray(a, dtype=dtype))
    return out


@njit(cache=True, nogil=True)
def search_snapshot(q_indptr: np.ndarray, q_terms: np.ndarray, q_counts: np.ndarray, q_idf: np.ndarray,
                    offsets_l: Any, docs_l: Any, tf_l: Any, inv_norm: np.ndarray, bases: np.ndarray,
                    mask: np.ndarray, has_mask: bool, rows: np.ndarray, row_bounds: np.ndarray, k: int,
                    acc: np.ndarray, seen: np.ndarray, touched: np.ndarray,
                    out_glob: np.ndarray, out_scores: np.ndarray) -> None:
    """Top ``k`` per query over every segment of a snapshot into ``out_glob`` (collection-wide
    positions ``bases[s] + position``) / ``out_scores`` ``(nq, k)``, padded -1 / 0; ties to the
    lower collection-wide position, i.e. by (segment ordinal, position).

    Query ``r``'s terms are columns ``q_indptr[r]:q_indptr[r + 1]`` of ``q_terms`` ``(S, nnz)``
    (segment term ids, -1 = skipped), with float32 counts and idf. ``inv_norm`` and ``mask``
    (uint8) are collection-wide; ``rows`` the allowed collection-wide positions (ascending),
    segment ``s``'s being ``rows[row_bounds[s]:row_bounds[s + 1]]``; both apply when ``has_mask``.
    ``acc`` / ``seen`` (zeros, as large as the largest segment) are left as found."""
    hs = np.empty(max(k, 1), np.float32)
    hp = np.empty(max(k, 1), np.int64)
    one = np.float32(1.0)
    n_seg = bases.size - 1
    for r in range(q_indptr.size - 1):
        m = 0
        for s in range(n_seg):
            base = bases[s]
            offsets = offsets_l[s]
            docs = docs_l[s]
            tf = tf_l[s]
            r0 = row_bounds[s]
            n_rows = row_bounds[s + 1] - r0
            if has_mask and n_rows == 0:
                continue
            n_touched = 0
            for j in range(q_indptr[r], q_indptr[r + 1]):
                t = q_terms[s, j]
                if t < 0:
                    continue
                a = offsets[t]
                b = offsets[t + 1]
                c = q_counts[j]
                idf = q_idf[j]
                length = b - a
                # galloping lookups of the allowed positions cost about n_rows * log2(length / n_rows)
                if has_mask and n_rows * (1.0 + np.log2(max(length / n_rows, 1.0))) < length:
                    lo = a
                    for i in range(r0, r0 + n_rows):
                        d = rows[i] - base
                        lo = _lower_bound(docs, lo, b, d)
                        if lo >= b:
                            break
                        if docs[lo] != d:
                            continue
                        w = idf - idf / (one + np.float32(tf[lo]) * inv_norm[base + d])
                        acc[d] += c * w
                        if not seen[d]:
                            seen[d] = True
                            touched[n_touched] = d
                            n_touched += 1
                        lo += 1
                else:
                    for p in range(a, b):
                        d = docs[p]
                        if has_mask and mask[base + d] == 0:
                            continue
                        w = idf - idf / (one + np.float32(tf[p]) * inv_norm[base + d])
                        acc[d] += c * w
                        if not seen[d]:
                            seen[d] = True
                            touched[n_touched] = d
                            n_touched += 1
            for i in range(n_touched):
                d = touched[i]
                sc = acc[d]
                acc[d] = 0.0
                seen[d] = False
                if np.isfinite(sc):
                    m = _push(hs, hp, m, k, sc, base + d)
        _drain(hs, hp, m, k, out_glob[r], out_scores[r])
