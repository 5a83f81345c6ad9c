"""Exhaustive (term-at-a-time, no pruning) search kernels of the inverted index; also the
load-time checks of posting and forward arrays. Private: use :class:`lsr.InvertedIndex`.

The search kernels take a few named tuples of contiguous arrays (the queries as a
:data:`QueryBatch`, the lists as a :data:`~lsr.index._codec_kernels.PostingLists`, per-thread
:data:`TaatScratch` buffers) and scalars, allocate per thread (never per posting) and release
the GIL. Ties are broken towards the lower document position, so results are
deterministic and independent of the number of threads.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange

from lsr.index._codec_kernels import BLOCK, PostingLists, block_size, decode_block
from lsr.index._heap_kernels import _drain, _push

#: A batch of sparse queries in CSR form: query ``q``'s term ids are
#: ``indices[indptr[q]:indptr[q + 1]]`` and its weights the same slice of ``data`` (float32).
QueryBatch = namedtuple("QueryBatch", ["indptr", "indices", "data"])

#: One thread's scratch buffers for term-at-a-time search: ``acc`` (float32, n_docs: the dense
#: accumulator, all zeros between queries), ``seen`` (uint8, n_docs: zeros between queries) and
#: ``touched`` (int32, n_docs) to track the documents a query touches, the top-k heap ``hs`` /
#: ``hd`` (float32 / int64, k) and one decoded block ``dbuf`` / ``ibuf`` (int64, 128).
TaatScratch = namedtuple("TaatScratch", ["acc", "seen", "touched", "hs", "hd", "dbuf", "ibuf"])

#: The documents a search may return: ``allowed`` (uint8, n_docs: 1 = allowed) and ``rows``
#: (int64, the allowed positions ascending); both empty = every document.
Mask = namedtuple("Mask", ["allowed", "rows"])

#: :data:`Mask` of every document (what a search without ``allowed`` passes).
NO_MASK = Mask(np.zeros(0, np.uint8), np.zeros(0, np.int64))


@njit(nogil=True, cache=True)
def taat_scratch(n_docs, k):
    """Fresh :data:`TaatScratch` buffers for ``n_docs`` documents and ``k`` results."""
    return TaatScratch(np.zeros(n_docs, np.float32), np.zeros(n_docs, np.uint8), np.empty(n_docs, np.int32),
                       np.empty(k, np.float32), np.empty(k, np.int64), np.empty(BLOCK, np.int64),
                       np.empty(BLOCK, np.int64))


@njit(inline="always")
def _add_list(t, w, lists, buf, nt, track):
    """``buf.acc[d] += w * weight`` for every posting of term ``t`` of the :data:`PostingLists`
    ``lists``; with ``track`` also record first-time documents in ``buf.touched[nt:]`` (``seen``
    flags). Returns (new nt, first position, last position)."""
    acc, seen, touched, dbuf, ibuf = buf.acc, buf.seen, buf.touched, buf.dbuf, buf.ibuf
    offsets, term_blocks, raw_docs, raw_imps, post_w, quant = (lists.offsets, lists.term_blocks, lists.raw_docs,
                                                               lists.raw_imps, lists.post_w, lists.quant)
    lo = np.int64(acc.size)
    hi = np.int64(-1)
    # two copies of the loop on purpose: folding them into one inlined helper made this scan
    # ~9x slower (measured with scripts/bench_sparse.py's exhaustive row)
    if raw_docs.size > 0:  # decoded in memory: read the list directly
        a, e = offsets[t], offsets[t + 1]
        for p in range(a, e):
            d = raw_docs[p]
            if track and seen[d] == 0:
                seen[d] = 1
                touched[nt] = d
                nt += 1
            if quant:
                acc[d] += w * np.float32(raw_imps[p])
            else:
                acc[d] += w * post_w[p]
        return nt, np.int64(raw_docs[a]), np.int64(raw_docs[e - 1])
    for b in range(term_blocks[t], term_blocks[t + 1]):
        n = block_size(offsets, term_blocks, t, b)
        decode_block(lists, t, b, n, dbuf, ibuf)
        p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
        if b == term_blocks[t]:
            lo = dbuf[0]
        for i in range(n):
            d = dbuf[i]
            if track and seen[d] == 0:
                seen[d] = 1
                touched[nt] = d
                nt += 1
            if quant:
                acc[d] += w * np.float32(ibuf[i])
            else:
                acc[d] += w * post_w[p0 + i]
        hi = dbuf[n - 1]
    return nt, lo, hi


@njit(inline="always")
def _add_list_masked(t, w, lists, buf, nt, track, allowed):
    """:func:`_add_list` over the documents with ``allowed[d] != 0`` only (the others are not
    accumulated, tracked or flagged). A copy rather than a flag of :func:`_add_list`, whose
    unfiltered loop stays as measured."""
    acc, seen, touched, dbuf, ibuf = buf.acc, buf.seen, buf.touched, buf.dbuf, buf.ibuf
    offsets, term_blocks, raw_docs, raw_imps, post_w, quant = (lists.offsets, lists.term_blocks, lists.raw_docs,
                                                               lists.raw_imps, lists.post_w, lists.quant)
    if raw_docs.size > 0:
        a, e = offsets[t], offsets[t + 1]
        for p in range(a, e):
            d = raw_docs[p]
            if allowed[d] == 0:
                continue
            if track and seen[d] == 0:
                seen[d] = 1
                touched[nt] = d
                nt += 1
            if quant:
                acc[d] += w * np.float32(raw_imps[p])
            else:
                acc[d] += w * post_w[p]
        return nt, np.int64(raw_docs[a]), np.int64(raw_docs[e - 1])
    lo = np.int64(acc.size)
    hi = np.int64(-1)
    for b in range(term_blocks[t], term_blocks[t + 1]):
        n = block_size(offsets, term_blocks, t, b)
        decode_block(lists, t, b, n, dbuf, ibuf)
        p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
        if b == term_blocks[t]:
            lo = dbuf[0]
        for i in range(n):
            d = dbuf[i]
            if allowed[d] == 0:
                continue
            if track and seen[d] == 0:
                seen[d] = 1
                touched[nt] = d
                nt += 1
            if quant:
                acc[d] += w * np.float32(ibuf[i])
            else:
                acc[d] += w * post_w[p0 + i]
        hi = dbuf[n - 1]
    return nt, lo, hi


@njit(nogil=True, cache=True)
def _one_query_masked(qi, qw, lists, positive_index, k, buf, mask, out_ids, out_scores):
    """:func:`_one_query` over the documents the :data:`Mask` ``mask`` allows: only they are
    accumulated, and the candidates are read from the allowed positions inside the touched range
    when they are fewer than the range (so a selective mask also skips most of the scan).

    A copy of :func:`_one_query`'s loop on purpose, not a mask argument to it: a check per posting
    in the unfiltered loop would cost every unfiltered search (which stays bit- and speed-identical)."""
    acc, seen, touched, hs, hd = buf.acc, buf.seen, buf.touched, buf.hs, buf.hd
    allowed, rows = mask.allowed, mask.rows
    offsets = lists.offsets
    vocab_size = offsets.size - 1
    positive = positive_index
    for j in range(qi.size):
        if qw[j] < 0.0 and qi[j] >= 0 and qi[j] < vocab_size:
            positive = False
    lo = np.int64(acc.size)
    hi = np.int64(-1)
    nt = 0
    for j in range(qi.size):
        t = qi[j]
        w = qw[j]
        if t < 0 or t >= vocab_size or w == 0.0 or offsets[t + 1] == offsets[t]:
            continue
        nt, a, b = _add_list_masked(t, w, lists, buf, nt, not positive, allowed)
        lo = min(lo, a)
        hi = max(hi, b)
    n = 0
    if positive:
        threshold = np.float32(0.0)
        if hi >= lo:
            r0 = np.searchsorted(rows, lo)
            r1 = np.searchsorted(rows, hi, side="right")
            if r1 - r0 < hi + 1 - lo:  # fewer allowed positions than the range: visit only them
                for r in range(r0, r1):
                    d = rows[r]
                    s = acc[d]
                    if s > threshold:
                        n = _push(hs, hd, n, k, s, d)
                        if n == k:
                            threshold = hs[0]
                    acc[d] = 0.0
            else:
                for d in range(lo, hi + 1):
                    s = acc[d]
                    if s > threshold:
                        n = _push(hs, hd, n, k, s, d)
                        if n == k:
                            threshold = hs[0]
                acc[lo : hi + 1] = 0.0
    else:
        for i in range(nt):
            d = touched[i]
            s = acc[d]
            acc[d] = 0.0
            seen[d] = 0
            n = _push(hs, hd, n, k, s, d)
    _drain(hs, hd, n, k, out_ids, out_scores)


@njit(nogil=True, cache=True)
def _one_query(qi, qw, lists, positive_index, k, buf, out_ids, out_scores):
    """Top ``k`` of one query (term ids ``qi``, weights ``qw``) over the :data:`PostingLists`
    ``lists``, by term-at-a-time accumulation into ``buf.acc`` (left all zeros) and a heap, into
    the output rows ``out_ids`` / ``out_scores`` (padded with -1 / 0).

    When every weight involved is positive (``positive_index`` and no negative query weight), a
    document matches iff its score is > 0, so the candidates are found by scanning the
    accumulator over the touched document range (branch-light, no bookkeeping per posting).
    Otherwise touched documents are tracked explicitly so that matches with a zero or negative
    total are still returned.
    """
    acc, seen, touched, hs, hd = buf.acc, buf.seen, buf.touched, buf.hs, buf.hd
    offsets = lists.offsets
    vocab_size = offsets.size - 1
    positive = positive_index
    for j in range(qi.size):
        if qw[j] < 0.0 and qi[j] >= 0 and qi[j] < vocab_size:
            positive = False
    lo = np.int64(acc.size)
    hi = np.int64(-1)
    nt = 0
    for j in range(qi.size):
        t = qi[j]
        w = qw[j]
        if t < 0 or t >= vocab_size or w == 0.0 or offsets[t + 1] == offsets[t]:
            continue
        nt, a, b = _add_list(t, w, lists, buf, nt, not positive)
        lo = min(lo, a)
        hi = max(hi, b)
    n = 0
    if positive:
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
        for i in range(nt):
            d = touched[i]
            s = acc[d]
            acc[d] = 0.0
            seen[d] = 0
            n = _push(hs, hd, n, k, s, d)
    _drain(hs, hd, n, k, out_ids, out_scores)


@njit(nogil=True, cache=True)
def _run(queries, lists, n_docs, positive, k, mask, q_start, q_stop, q_step, out_ids, out_scores):
    """Exhaustive top ``k`` of queries ``q_start, q_start + q_step, ... < q_stop`` of the
    :data:`QueryBatch` ``queries`` among the documents the :data:`Mask` ``mask`` allows into rows
    of ``out_ids`` / ``out_scores``, with one set of scratch buffers."""
    buf = taat_scratch(n_docs, k)
    indptr, indices, data = queries.indptr, queries.indices, queries.data
    masked = mask.allowed.size > 0
    for q in range(q_start, q_stop, q_step):
        a, b = indptr[q], indptr[q + 1]
        if masked:
            _one_query_masked(indices[a:b], data[a:b], lists, positive, k, buf, mask, out_ids[q], out_scores[q])
        else:
            _one_query(indices[a:b], data[a:b], lists, positive, k, buf, out_ids[q], out_scores[q])


@njit(nogil=True, cache=True)
def search_serial(queries, lists, n_docs, positive, k, mask, out_ids, out_scores):
    """Exhaustive top ``k`` of every query of the :data:`QueryBatch` ``queries`` over the
    :data:`PostingLists` ``lists`` (``n_docs`` documents; ``positive``: all index weights > 0)
    among the documents the :data:`Mask` ``mask`` allows into ``out_ids`` (int64) /
    ``out_scores`` (float32), both (nq, k), on the calling thread.

    ``queries``, ``lists`` and ``mask`` may come as plain tuples of the same fields (see
    :meth:`lsr.InvertedIndex._call`: Numba types a plain tuple argument in C, a named one in
    Python, field by field)."""
    queries, lists, mask = QueryBatch(*queries), PostingLists(*lists), Mask(*mask)
    _run(queries, lists, n_docs, positive, k, mask, 0, queries.indptr.size - 1, 1, out_ids, out_scores)


@njit(nogil=True, parallel=True, cache=True)
def search_parallel(queries, lists, n_docs, positive, k, mask, n_chunks, out_ids, out_scores):
    """:func:`search_serial` with the queries dealt round-robin to ``n_chunks`` parallel workers."""
    queries, lists, mask = QueryBatch(*queries), PostingLists(*lists), Mask(*mask)
    nq = queries.indptr.size - 1
    for c in prange(n_chunks):
        _run(queries, lists, n_docs, positive, k, mask, c, nq, n_chunks, out_ids, out_scores)


@njit(nogil=True, cache=True)
def check_postings(offsets, post_docs, n_docs):
    """Return -1 if uncompressed postings are well formed, else the first bad posting position."""
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


@njit(nogil=True, cache=True)
def check_forward(indptr, terms, vocab_size):
    """Return -1 if a doc-major copy is well formed (rows non-decreasing in ``indptr``, term ids
    strictly increasing within a row and below ``vocab_size``), else the first bad row."""
    n_docs = indptr.size - 1
    for d in range(n_docs):
        a, b = indptr[d], indptr[d + 1]
        if b < a or a < 0 or b > terms.size:
            return d
        prev = -1
        for p in range(a, b):
            t = np.int64(terms[p])
            if t <= prev or t >= vocab_size:
                return d
            prev = t
    return -1
