"""Numba kernel of the learned sparse engines: a snapshot's small segments, a batch of queries, term at a time.

Private to :mod:`lsr.collection.engines.sparse`. Each segment is an
:class:`~lsr.index.inverted.InvertedIndex` with float32 weights held decoded in memory (int32
positions ascending within a term, float32 weights). A query's terms are added in the order
given, ``acc[d] += query weight * weight``: the float32 operations of the index's exhaustive
kernel (``lsr.index._exhaustive_kernels._one_query``), so each document's score is bit for bit
the one a search of its segment alone gives. Only documents the mask allows are scored; a list
that is long next to the allowed documents is probed by galloping lookups of the allowed
positions instead of being scanned (as in :mod:`lsr.collection._bm25_kernels`). When every
weight involved is positive only documents scoring above zero are candidates (what the index
returns); otherwise every document sharing a term with the query is. The top ``k`` over all the
segments (score descending, ties by segment ordinal then position) come from one bounded heap
per query, so one call searches every segment: no per-segment call, heap or merge.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from lsr.collection import _bm25_kernels
from lsr.collection._bm25_kernels import _lower_bound
from lsr.index._heap_kernels import _drain, _push

__all__ = ["search_segments", "segment_lists"]


def segment_lists(offsets: list, docs: list, weights: list) -> tuple:
    """The segments' arrays (offsets, docs, float32 weights) as Numba typed lists, no copy."""
    return _bm25_kernels.segment_lists(offsets, docs, weights, np.float32)


@njit(cache=True, nogil=True)
def search_segments(q_indptr: np.ndarray, q_terms: np.ndarray, q_weights: np.ndarray, positive_index: bool,
                    offsets_l: Any, docs_l: Any, weights_l: Any, bases: np.ndarray,
                    mask: np.ndarray, has_mask: bool, rows: np.ndarray, row_bounds: np.ndarray, k: int,
                    acc: np.ndarray, seen: np.ndarray, touched: np.ndarray,
                    out_glob: np.ndarray, out_scores: np.ndarray) -> None:
    """Top ``k`` per query over the segments into ``out_glob`` (positions ``bases[s] + position``
    over the segments given) / ``out_scores`` ``(nq, k)``, padded -1 / 0.

    Query ``r``'s terms and float32 weights are ``q_terms`` / ``q_weights``
    ``[q_indptr[r]:q_indptr[r + 1]]`` (ids outside the vocabulary and zero weights skipped).
    ``positive_index``: every stored weight is positive. ``mask`` (uint8, over the segments given)
    and ``rows`` (its allowed positions, ascending; segment ``s``'s are
    ``rows[row_bounds[s]:row_bounds[s + 1]]``) apply when ``has_mask``. ``acc`` / ``seen`` (zeros,
    as large as the largest segment) are left as found."""
    hs = np.empty(max(k, 1), np.float32)
    hp = np.empty(max(k, 1), np.int64)
    n_seg = bases.size - 1
    for r in range(q_indptr.size - 1):
        positive = positive_index
        for j in range(q_indptr[r], q_indptr[r + 1]):
            if q_weights[j] < 0.0:
                positive = False
        m = 0
        for s in range(n_seg):
            base = bases[s]
            offsets = offsets_l[s]
            docs = docs_l[s]
            weights = weights_l[s]
            vocab = offsets.size - 1
            r0 = row_bounds[s]
            n_rows = row_bounds[s + 1] - r0
            if has_mask and n_rows == 0:
                continue
            n_touched = 0
            lo_d = docs.size
            hi_d = -1
            for j in range(q_indptr[r], q_indptr[r + 1]):
                t = q_terms[j]
                w = q_weights[j]
                if t < 0 or t >= vocab or w == 0.0:
                    continue
                a = offsets[t]
                b = offsets[t + 1]
                length = b - a
                if length == 0:
                    continue
                if not has_mask:
                    # the hot loop: no mask, no bookkeeping when every weight is positive (the
                    # candidates are then the documents of the touched range scoring above zero)
                    if positive:
                        for p in range(a, b):
                            acc[docs[p]] += w * weights[p]
                        lo_d = min(lo_d, docs[a])
                        hi_d = max(hi_d, docs[b - 1])
                    else:
                        for p in range(a, b):
                            d = docs[p]
                            acc[d] += w * weights[p]
                            if not seen[d]:
                                seen[d] = True
                                touched[n_touched] = d
                                n_touched += 1
                elif n_rows * (1.0 + np.log2(max(length / n_rows, 1.0))) < length:
                    # galloping lookups of the allowed positions: about n_rows * log2(length / n_rows)
                    lo = a
                    for i in range(r0, r0 + n_rows):
                        d = rows[i] - base
                        lo = _lower_bound(docs, lo, b, d)
                        if lo >= b:
                            break
                        if docs[lo] != d:
                            continue
                        acc[d] += w * weights[lo]
                        if not seen[d]:
                            seen[d] = True
                            touched[n_touched] = d
                            n_touched += 1
                        lo += 1
                else:
                    for p in range(a, b):
                        d = docs[p]
                        if mask[base + d] == 0:
                            continue
                        acc[d] += w * weights[p]
                        if not seen[d]:
                            seen[d] = True
                            touched[n_touched] = d
                            n_touched += 1
            if hi_d >= lo_d:  # ascending scan: an equal score never beats a kept (lower) position
                threshold = hs[0] if m == k else np.float32(0.0)
                for d in range(lo_d, hi_d + 1):
                    sc = acc[d]
                    if sc > threshold:
                        m = _push(hs, hp, m, k, sc, base + d)
                        if m == k:
                            threshold = hs[0]
                    acc[d] = 0.0
            for i in range(n_touched):
                d = touched[i]
                sc = acc[d]
                acc[d] = 0.0
                seen[d] = False
                if sc > 0.0 or not positive:
                    m = _push(hs, hp, m, k, sc, base + d)
        _drain(hs, hp, m, k, out_glob[r], out_scores[r])


@njit(cache=True, nogil=True)
def join_segments(offsets_l: Any, docs_l: Any, weights_l: Any, doc_bases: np.ndarray, out_offsets: np.ndarray,
                  out_docs: np.ndarray, out_weights: np.ndarray) -> None:
    """Concatenate segments into one set of posting lists: term ``t``'s list is segment 0's list
    of ``t``, then segment 1's, ..., positions shifted by ``doc_bases[s]`` (so still ascending).
    ``out_offsets`` (vocab + 1), ``out_docs`` / ``out_weights`` (total postings) are filled.

    A snapshot of many small segments is searched over such joined lists: scanning one list
    costs about a cache miss to start, so 32 fragments of a list cost far more than one."""
    n_seg = len(offsets_l)
    vocab = out_offsets.size - 1
    out_offsets[0] = 0
    for t in range(vocab):
        c = 0
        for s in range(n_seg):
            c += offsets_l[s][t + 1] - offsets_l[s][t]
        out_offsets[t + 1] = out_offsets[t] + c
    cursor = out_offsets[:-1].copy()
    for s in range(n_seg):  # segment by segment: sequential reads, one write cursor per term
        offsets = offsets_l[s]
        docs = docs_l[s]
        weights = weights_l[s]
        base = np.int32(doc_bases[s])
        for t in range(vocab):
            c = cursor[t]
            for p in range(offsets[t], offsets[t + 1]):
                out_docs[c] = docs[p] + base
                out_weights[c] = weights[p]
                c += 1
            cursor[t] = c
