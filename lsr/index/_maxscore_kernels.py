"""Numba kernels for pruned search of the inverted index. Private: use :class:`lsr.InvertedIndex`.

Posting lists come as blocks of 128 (:mod:`lsr.index._codec_kernels`), read either from the lists held
decoded in memory (``raw_docs`` / ``raw_imps``, the default) or by decoding blocks in place.

Exact mode is term-at-a-time MaxScore: query terms are processed in decreasing order of their
upper bound (query weight x the term's largest impact) into a dense accumulator while the sum
of the bounds of the terms not yet processed can still lift a document into the top ``k``
(the ``k``-th best partial score is a valid lower bound of the final threshold). The remaining
("non-essential") terms are then added only to the documents whose partial score plus their
bound within the document's window of 64 positions still reaches the threshold: by reading the
document's row in a doc-major (forward) copy when there is one (stored, or derived in memory in
decoded mode), else document at a time through one cursor per remaining list (block skipping by
last position, block-max pruning, early termination). Every bound carries a small relative slack
for float rounding, so the result is exactly the top ``k`` of the index's scores, ties to the
lower position.

Approximate mode (Seismic-like, but with exact re-scoring of a few candidates): the
``query_cut`` query terms with the largest upper bounds are accumulated from a statically
pruned copy of their lists (each list's ``n_postings`` highest impacts), touching only the
documents they contain; the ``candidates`` best partial scores (those at least
``heap_factor`` times the ``k``-th best partial score) are re-scored over ALL query terms, on
the forward copy (fine 16-bit or float weights when stored) or by intersecting them with the
compressed lists, and the best ``k`` returned.
Cost: about ``query_cut * n_postings + candidates * terms per document`` operations.

Kernels take a few named tuples of contiguous arrays (defined below, built by
:meth:`lsr.InvertedIndex.search`) and scalars, release the GIL, and allocate per thread only.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange

from lsr.index._codec_kernels import BLOCK, PostingLists, block_size, decode_block
from lsr.index._exhaustive_kernels import Mask, QueryBatch, TaatScratch, _one_query, _one_query_masked
from lsr.index._heap_kernels import _drain, _push, _sift_down

_SLACK = 1e-4  # relative slack on upper bounds (float32 sums of <= thousands of terms)
_SHIFT = 6  # documents per block = 64 (block flags and block-max tables)

#: Upper bounds for pruning: ``term_max`` (float32, vocab: each list's largest impact) and the
#: per-term maxima over windows of 64 document positions (:func:`window_maxima`): term ``t``'s
#: are ``bm_values[bm_offsets[t]:bm_offsets[t + 1]]`` (an empty range: use ``term_max``).
Bounds = namedtuple("Bounds", ["term_max", "bm_offsets", "bm_values"])

#: A doc-major (forward) copy of the index: document ``d``'s term ids (ascending) are
#: ``terms[indptr[d]:indptr[d + 1]]`` and its weights (16-bit codes or float32) the same slice
#: of ``weights``; all three empty when there is none.
Forward = namedtuple("Forward", ["indptr", "terms", "weights"])

#: Statically pruned lists (:func:`prune_lists`) that approximate mode finds candidates with:
#: term ``t``'s documents ``docs[offsets[t]:offsets[t + 1]]`` (int32, ascending) and impacts
#: (float32) the same slice of ``weights``; unused (``docs`` empty) in exact mode.
Pruned = namedtuple("Pruned", ["offsets", "docs", "weights"])

#: Search settings (scalars): ``n_docs``, ``k``; ``approx`` (approximate mode), ``query_cut``
#: (terms that find candidates, 0: all), ``heap_factor``, ``candidates`` (re-scored at most);
#: ``out_scale`` (score of one unit of the index's weights), ``fine_scale`` (of one unit of the
#: forward weights); ``has_forward`` (a forward copy is there: exact mode finishes and
#: approximate mode re-scores candidates on it) and ``codes16`` (its weights are 16-bit codes).
Settings = namedtuple("Settings", ["n_docs", "k", "approx", "query_cut", "heap_factor", "candidates", "out_scale",
                                   "fine_scale", "has_forward", "codes16"])

#: One thread's scratch buffers: the term-at-a-time ones (``acc``, ``seen``, ``touched`` over
#: documents; ``hs`` / ``hd``: a k-heap; ``dbuf`` / ``ibuf``: one decoded block, as in
#: :data:`~lsr.index._exhaustive_kernels.TaatScratch`), ``bf`` (uint8 flag per window of 64
#: documents), ``cand`` / ``cw`` (candidates and their scores), ``qmap`` (float32, vocab: query
#: weight by term, zeros between queries), ``qpos`` (int32, vocab: -1 between queries), the
#: unique query terms ``ut`` / ``uw`` / ``ub`` (term, weight, bound), the heaps ``fs`` / ``fd``
#: (final, k) and ``cs`` / ``cd`` / ``ss`` / ``sd`` (candidates, max(candidates, k)), and per
#: query term a list cursor ``cur`` (current block, decoded block, position, size), its decoded
#: block ``tdb`` / ``tib`` and the suffix sums of the bounds ``rsuf``.
Scratch = namedtuple("Scratch", ["acc", "seen", "touched", "hs", "hd", "dbuf", "ibuf", "bf", "cand", "cw", "qmap",
                                 "qpos", "ut", "uw", "ub", "fs", "fd", "cs", "cd", "ss", "sd", "cur", "tdb", "tib",
                                 "rsuf"])


@njit(inline="always")
def _fine(w, q16):
    """Forward weight -> fine value (16-bit code or float as is)."""
    return np.float32(w)


@njit(inline="always")
def _coarse(w, q16):
    """Forward weight -> the impact stored in the posting lists (8-bit code from a 16-bit one)."""
    if q16:
        c = (np.int64(w) + 128) // 257
        return np.float32(c if c > 0 else 1)
    return np.float32(w)


@njit(inline="always")
def _add_essential(d, c, buf, k):
    """Phase 1: ``buf.acc[d] += c``, flag d's window in ``buf.bf``, keep the list's k best
    updated documents in the heap ``buf.hs`` / ``buf.hd``."""
    acc, hs, hd = buf.acc, buf.hs, buf.hd
    v = acc[d] + c
    acc[d] = v
    buf.bf[d >> _SHIFT] = 1
    if v > hs[0]:
        hs[0] = v
        hd[0] = d
        _sift_down(hs, hd, k, 0)


@njit(inline="always")
def _rescore(d, fwd, qmap, q16, fine):
    """Sum of ``qmap[t] * weight`` over document d's terms in the :data:`Forward` copy ``fwd``
    (coarse 8-bit or fine values)."""
    fwd_terms, fwd_w = fwd.terms, fwd.weights
    s = np.float32(0.0)
    for p in range(fwd.indptr[d], fwd.indptr[d + 1]):
        wq = qmap[fwd_terms[p]]
        if wq != 0.0:
            if fine:
                s += wq * _fine(fwd_w[p], q16)
            else:
                s += wq * _coarse(fwd_w[p], q16)
    return s


@njit(inline="always")
def _unique_terms(qi, qw, vocab_size, qpos, ut, uw):
    """Merge duplicate query terms into ``ut`` / ``uw``; drop out-of-vocabulary and zero ones.
    Returns (m, positive): the number of unique terms and whether all their weights are >= 0."""
    m = 0
    for j in range(qi.size):
        t = qi[j]
        if t < 0 or t >= vocab_size or qw[j] == 0.0:
            continue
        p = qpos[t]
        if p < 0:
            qpos[t] = m
            ut[m] = t
            uw[m] = qw[j]
            m += 1
        else:
            uw[p] += qw[j]
    positive = True
    for j in range(m):
        qpos[ut[j]] = -1
        if uw[j] < 0.0:
            positive = False
    return m, positive


@njit(inline="always")
def _sort_desc(key, a, b, m):
    """Insertion sort of key[:m] descending, permuting a and b alongside (m is small)."""
    for i in range(1, m):
        kv, av, bv = key[i], a[i], b[i]
        j = i - 1
        while j >= 0 and key[j] < kv:
            key[j + 1], a[j + 1], b[j + 1] = key[j], a[j], b[j]
            j -= 1
        key[j + 1], a[j + 1], b[j + 1] = kv, av, bv


@njit(inline="always")
def _intersect(t, w, lists, cand, cs, nc, dbuf, ibuf):
    """Add term ``t``'s ``w * weight`` (from the :data:`PostingLists` ``lists``) to the scores
    ``cs[:nc]`` of the candidates ``cand[:nc]`` (ascending positions), skipping blocks by their
    last position and decoding each block at most once."""
    offsets, term_blocks, block_last, post_w, quant = (lists.offsets, lists.term_blocks, lists.block_last,
                                                       lists.post_w, lists.quant)
    b = term_blocks[t]
    tb1 = term_blocks[t + 1]
    dec = np.int64(-1)
    n = 0
    ip = 0
    p0 = 0
    for i in range(nc):
        d = cand[i]
        while b < tb1 and block_last[b] < d:
            b += 1
        if b >= tb1:
            break  # the candidates are ascending: none of the rest is in the list
        if dec != b:
            n = block_size(offsets, term_blocks, t, b)
            decode_block(lists, t, b, n, dbuf, ibuf)
            p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
            dec = b
            ip = 0
        while ip < n and dbuf[ip] < d:
            ip += 1
        if ip < n and dbuf[ip] == d:
            if quant:
                cs[i] += w * np.float32(ibuf[ip])
            else:
                cs[i] += w * post_w[p0 + ip]


@njit(nogil=True, cache=True)
def _approx_query(m, lists, fwd, pruned, cfg, buf, allowed, out_ids, out_scores):
    """Approximate top ``cfg.k`` of one query whose ``m`` unique positive terms ``buf.ut`` /
    ``buf.uw`` are sorted by decreasing bound: candidates from the :data:`Pruned` lists of the
    first ``cfg.query_cut`` terms (only documents with ``allowed[d] != 0`` when ``allowed`` is
    not empty), re-scored over all terms on the :data:`Forward` copy ``fwd``
    (fine weights) or by intersecting them with the :data:`PostingLists` ``lists``; into the
    output rows ``out_ids`` / ``out_scores``."""
    acc, qmap, touched, cand, cw = buf.acc, buf.qmap, buf.touched, buf.cand, buf.cw
    cs, cd, ss, sd, fs, fd = buf.cs, buf.cd, buf.ss, buf.sd, buf.fs, buf.fd
    ut, uw = buf.ut, buf.uw
    p_offsets, p_docs, p_w = pruned.offsets, pruned.docs, pruned.weights
    k, query_cut = cfg.k, cfg.query_cut
    cut = m if query_cut <= 0 else min(query_cut, m)
    masked = allowed.size > 0
    nt = 0
    for j in range(cut):  # partial scores of the touched documents (all contributions > 0)
        t = ut[j]
        w = uw[j]
        for p in range(p_offsets[t], p_offsets[t + 1]):
            d = p_docs[p]
            if masked and allowed[d] == 0:
                continue
            v = acc[d]
            if v == 0.0:
                touched[nt] = d
                nt += 1
            acc[d] = v + w * np.float32(p_w[p])
    # the candidates best partial scores (ties to lower positions), reset the accumulator
    c = max(cfg.candidates, k)
    n = 0
    thr = np.float32(-1.0)
    for i in range(nt):
        d = touched[i]
        s = acc[d]
        acc[d] = 0.0
        if s >= thr:
            n = _push(cs, cd, n, c, s, d)
            if n == c:
                thr = cs[0]
    # best first; rescore those at least heap_factor times the k-th best partial score
    _drain(cs, cd, n, c, sd, ss)
    lim = cfg.heap_factor * ss[k - 1] if n >= k else np.float32(0.0)
    nr = 0
    while nr < n and ss[nr] >= lim:
        nr += 1
    nf = 0
    if cfg.has_forward:  # fine (16-bit or float) weights of the forward copy
        for j in range(m):
            qmap[ut[j]] = uw[j]
        for i in range(nr):
            d = sd[i]
            s = _rescore(d, fwd, qmap, cfg.codes16, True) * cfg.fine_scale
            nf = _push(fs, fd, nf, k, s, d)
        for j in range(m):
            qmap[ut[j]] = 0.0
    else:  # the index's own weights, by intersecting the candidates with every query list
        for i in range(nr):
            cand[i] = sd[i]
        cand[:nr].sort()
        cw[:nr] = 0.0
        for j in range(m):
            _intersect(ut[j], uw[j], lists, cand, cw, nr, buf.dbuf, buf.ibuf)
        for i in range(nr):
            nf = _push(fs, fd, nf, k, cw[i] * cfg.out_scale, cand[i])
    _drain(fs, fd, nf, k, out_ids, out_scores)


@njit(nogil=True, cache=True)
def _query(qi, qw, lists, bounds, fwd, pruned, cfg, buf, mask, out_ids, out_scores):
    """Top ``cfg.k`` of one query (term ids ``qi``, weights ``qw``) into the output rows
    ``out_ids`` / ``out_scores`` (padded with -1 / 0): exact MaxScore over the
    :data:`PostingLists` ``lists`` with the :data:`Bounds` ``bounds`` (finishing candidates on the
    :data:`Forward` copy ``fwd`` when ``cfg.has_forward``), or approximate search
    (:func:`_approx_query`) when ``cfg.approx``; a query with a negative weight is searched
    exhaustively. Only documents the :data:`Mask` ``mask`` allows are accumulated (so they alone
    set the thresholds: removing documents keeps every bound valid) and returned. ``buf`` is the
    thread's :data:`Scratch`, left as it was found."""
    offsets, term_blocks, block_last, block_max = lists.offsets, lists.term_blocks, lists.block_last, lists.block_max
    raw_docs, raw_imps, post_w, quant = lists.raw_docs, lists.raw_imps, lists.post_w, lists.quant
    bm_offsets, bm_values = bounds.bm_offsets, bounds.bm_values
    acc, bf, qmap, ut, uw, ub = buf.acc, buf.bf, buf.qmap, buf.ut, buf.uw, buf.ub
    hs, hd, fs, fd, dbuf, ibuf = buf.hs, buf.hd, buf.fs, buf.fd, buf.dbuf, buf.ibuf
    cur, tdb, tib, rsuf = buf.cur, buf.tdb, buf.tib, buf.rsuf
    n_docs, k, out_scale, q16 = cfg.n_docs, cfg.k, cfg.out_scale, cfg.codes16
    vocab_size = offsets.size - 1
    allowed = mask.allowed
    masked = allowed.size > 0
    m, positive = _unique_terms(qi, qw, vocab_size, buf.qpos, ut, uw)
    if m == 0:
        _drain(fs, fd, 0, k, out_ids, out_scores)
        return
    if not positive:
        taat = TaatScratch(acc, buf.seen, buf.touched, hs, hd, dbuf, ibuf)
        if masked:
            _one_query_masked(qi, qw, lists, False, k, taat, mask, out_ids, out_scores)
        else:
            _one_query(qi, qw, lists, False, k, taat, out_ids, out_scores)
        for i in range(k):
            if out_ids[i] >= 0:
                out_scores[i] *= out_scale
        return
    for j in range(m):
        ub[j] = uw[j] * bounds.term_max[ut[j]]
    _sort_desc(ub, ut, uw, m)
    if cfg.approx:
        _approx_query(m, lists, fwd, pruned, cfg, buf, allowed, out_ids, out_scores)
        return
    factor = np.float32(1.0 + _SLACK)
    # ---- phase 1: essential terms, OR mode, while the remaining bounds can reach the threshold
    rest = np.float32(0.0)
    for j in range(m):
        rest += ub[j]
    theta = np.float32(0.0)
    j = 0
    while j < m:
        if rest * factor < theta:
            break
        t = ut[j]
        w = uw[j]
        # k best documents of this list after the update: distinct documents, so their k-th
        # partial score (or the previous threshold, as placeholders) bounds the final threshold
        for i in range(k):
            hs[i] = theta
            hd[i] = -1
        if raw_docs.size > 0:  # decoded in memory: read the list directly
            for p in range(offsets[t], offsets[t + 1]):
                if masked and allowed[raw_docs[p]] == 0:
                    continue
                c = w * np.float32(raw_imps[p]) if quant else w * post_w[p]
                _add_essential(raw_docs[p], c, buf, k)
        else:
            for b in range(term_blocks[t], term_blocks[t + 1]):
                n = block_size(offsets, term_blocks, t, b)
                decode_block(lists, t, b, n, dbuf, ibuf)
                p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
                for i in range(n):
                    if masked and allowed[dbuf[i]] == 0:
                        continue
                    c = w * np.float32(ibuf[i]) if quant else w * post_w[p0 + i]
                    _add_essential(dbuf[i], c, buf, k)
        theta = hs[0]
        rest -= ub[j]
        if rest < 0.0:
            rest = np.float32(0.0)
        j += 1
    n = 0
    if j == m:  # every term was essential: the accumulator holds final scores
        thr = np.float32(0.0)
        for blk in range(bf.size):
            if bf[blk] == 0:
                continue
            bf[blk] = 0
            lo, hi = blk << _SHIFT, min((blk + 1) << _SHIFT, n_docs)
            for d in range(lo, hi):
                s = acc[d]
                if s > thr:
                    n = _push(fs, fd, n, k, s, d)
                    if n == k:
                        thr = fs[0]
            acc[lo:hi] = 0.0
    elif cfg.has_forward:
        # ---- phase 2 with a forward copy: finish candidates on their document rows, skipping
        # windows of 64 positions by the remaining terms' window maxima (bm tables)
        for jj in range(j, m):
            qmap[ut[jj]] = uw[jj]
        for i in range(k):  # seed the final heap with the last list's best documents
            d = hd[i]
            if d >= 0:
                s = acc[d] + _rescore(d, fwd, qmap, q16, False)
                acc[d] = -np.inf
                n = _push(fs, fd, n, k, s, d)
        for blk in range(bf.size):
            if bf[blk] == 0:
                continue
            bf[blk] = 0
            bb = np.float32(0.0)  # bound of the non-essential terms within this window
            for jj in range(j, m):
                t = ut[jj]
                o = bm_offsets[t]
                if bm_offsets[t + 1] > o:
                    bb += uw[jj] * np.float32(bm_values[o + blk])
                else:
                    bb += ub[jj]
            lo, hi = blk << _SHIFT, min((blk + 1) << _SHIFT, n_docs)
            thr = theta if n < k or fs[0] < theta else fs[0]
            cut = thr / factor - bb  # partial scores below this cannot reach the top k
            for d in range(lo, hi):
                s = acc[d]
                if s >= cut and not (masked and allowed[d] == 0):
                    s += _rescore(d, fwd, qmap, q16, False)
                    if s > 0.0:
                        n = _push(fs, fd, n, k, s, d)
                        thr = theta if n < k or fs[0] < theta else fs[0]
                        cut = thr / factor - bb
            acc[lo:hi] = 0.0
        for jj in range(m):
            qmap[ut[jj]] = 0.0
    else:
        # ---- phase 2 (document at a time over the candidates, ascending): a document touched by
        # the essential terms is finished on the remaining lists through one cursor per list
        # (skipping blocks by their last position, decoding a block at most once), term by term
        # in decreasing bound order, and dropped as soon as its partial score plus the bounds
        # left (the current block's maximum for the next list) cannot reach the threshold,
        # which is the k-th final score found so far (or the phase-1 bound while fewer).
        rsuf[m] = np.float32(0.0)
        for jj in range(m - 1, j - 1, -1):
            rsuf[jj] = rsuf[jj + 1] + ub[jj]
        for jj in range(j, m):
            t = ut[jj]
            cur[jj, 0] = term_blocks[t]  # current block
            cur[jj, 1] = -1  # decoded block
            cur[jj, 2] = 0  # position in the decoded block
            cur[jj, 3] = 0  # its size
        for blk in range(bf.size):
            if bf[blk] == 0:
                continue
            bf[blk] = 0
            lo, hi = blk << _SHIFT, min((blk + 1) << _SHIFT, n_docs)
            # bound of the remaining lists within this window of 64 positions: the maxima of
            # the blocks that overlap it (cursors move forward only)
            bb = np.float32(0.0)
            for jj in range(j, m):
                t = ut[jj]
                bi = cur[jj, 0]
                tb1 = term_blocks[t + 1]
                while bi < tb1 and block_last[bi] < lo:
                    bi += 1
                cur[jj, 0] = bi
                mx = np.float32(0.0)
                while bi < tb1:
                    if np.float32(block_max[bi]) > mx:
                        mx = np.float32(block_max[bi])
                    if block_last[bi] >= hi - 1:
                        break
                    bi += 1
                bb += uw[jj] * mx
            thr = fs[0] if n == k and fs[0] > theta else theta
            cut = thr / factor - bb
            for d in range(lo, hi):
                s = acc[d]
                if s <= 0.0 or s < cut:
                    continue
                alive = True
                for jj in range(j, m):
                    t = ut[jj]
                    w = uw[jj]
                    bi = cur[jj, 0]
                    tb1 = term_blocks[t + 1]
                    while bi < tb1 and block_last[bi] < d:
                        bi += 1
                    cur[jj, 0] = bi
                    if bi < tb1:
                        if (s + w * np.float32(block_max[bi]) + rsuf[jj + 1]) * factor < thr:
                            alive = False
                            break
                        if cur[jj, 1] != bi:
                            nb = block_size(offsets, term_blocks, t, bi)
                            decode_block(lists, t, bi, nb, tdb[jj], tib[jj])
                            cur[jj, 1] = bi
                            cur[jj, 2] = 0
                            cur[jj, 3] = nb
                        ip = cur[jj, 2]
                        nb = cur[jj, 3]
                        while ip < nb and tdb[jj, ip] < d:
                            ip += 1
                        cur[jj, 2] = ip
                        if ip < nb and tdb[jj, ip] == d:
                            if quant:
                                s += w * np.float32(tib[jj, ip])
                            else:
                                s += w * post_w[offsets[t] + (bi - term_blocks[t]) * BLOCK + ip]
                    if (s + rsuf[jj + 1]) * factor < thr:
                        alive = False
                        break
                if alive and s > 0.0:
                    n = _push(fs, fd, n, k, s, d)
                    thr = fs[0] if n == k and fs[0] > theta else theta
                    cut = thr / factor - bb
            acc[lo:hi] = 0.0
    _drain(fs, fd, n, k, out_ids, out_scores)
    for i in range(n):
        out_scores[i] *= out_scale


@njit(nogil=True, cache=True)
def scratch(n_docs, vocab_size, max_terms, k, candidates):
    """Fresh :data:`Scratch` buffers for ``n_docs`` documents, a vocabulary of ``vocab_size``,
    queries of at most ``max_terms`` terms, ``k`` results and ``candidates`` re-scored."""
    c = max(candidates, k)
    return Scratch(
        np.zeros(n_docs, np.float32), np.zeros(n_docs, np.uint8), np.empty(n_docs, np.int32),  # acc seen touched
        np.empty(k, np.float32), np.empty(k, np.int64), np.empty(BLOCK, np.int64), np.empty(BLOCK, np.int64),
        np.zeros((n_docs >> _SHIFT) + 1, np.uint8), np.empty(n_docs, np.int64), np.empty(n_docs, np.float32),
        np.zeros(vocab_size, np.float32), np.full(vocab_size, -1, np.int32),  # qmap qpos
        np.empty(max_terms, np.int64), np.empty(max_terms, np.float32), np.empty(max_terms, np.float32),
        np.empty(k, np.float32), np.empty(k, np.int64),  # fs fd
        np.empty(c, np.float32), np.empty(c, np.int64), np.empty(c, np.float32), np.empty(c, np.int64),
        np.zeros((max_terms, 4), np.int64), np.empty((max_terms, BLOCK), np.int64),
        np.empty((max_terms, BLOCK), np.int64), np.empty(max_terms + 1, np.float32),  # cur tdb tib rsuf
    )


@njit(nogil=True, cache=True)
def _run(queries, lists, bounds, fwd, pruned, cfg, mask, q_start, q_stop, q_step, out_ids, out_scores):
    """Search queries ``q_start, q_start + q_step, ... < q_stop`` of the :data:`QueryBatch`
    ``queries`` (:func:`_query`) into rows of ``out_ids`` / ``out_scores``, with one set of
    scratch buffers. ``mask`` may be a plain tuple of the :data:`Mask` fields (named here: a
    named tuple made in the parallel entry point does not lower inside its prange)."""
    mask = Mask(*mask)
    indptr, indices, data = queries.indptr, queries.indices, queries.data
    max_terms = 1
    for q in range(q_start, q_stop, q_step):
        max_terms = max(max_terms, indptr[q + 1] - indptr[q])
    buf = scratch(cfg.n_docs, lists.offsets.size - 1, max_terms, cfg.k, cfg.candidates)
    for q in range(q_start, q_stop, q_step):
        a, b = indptr[q], indptr[q + 1]
        _query(indices[a:b], data[a:b], lists, bounds, fwd, pruned, cfg, buf, mask, out_ids[q], out_scores[q])


@njit(nogil=True, cache=True)
def search_serial(queries, lists, bounds, fwd, pruned, cfg, mask, out_ids, out_scores):
    """Top ``cfg.k`` of every query of the :data:`QueryBatch` ``queries`` (exact MaxScore or
    approximate, by the :data:`Settings` ``cfg``) over the :data:`PostingLists` ``lists`` with the
    :data:`Bounds`, :data:`Forward` and :data:`Pruned` tables, among the documents the
    :data:`~lsr.index._exhaustive_kernels.Mask` ``mask`` allows, into ``out_ids`` (int64) /
    ``out_scores`` (float32), both (nq, k), on the calling thread. The named tuples may come as
    plain tuples of the same fields (cheaper to pass: see :meth:`lsr.InvertedIndex._call`)."""
    queries, lists, bounds = QueryBatch(*queries), PostingLists(*lists), Bounds(*bounds)
    fwd, pruned, cfg = Forward(*fwd), Pruned(*pruned), Settings(*cfg)
    _run(queries, lists, bounds, fwd, pruned, cfg, mask, 0, queries.indptr.size - 1, 1, out_ids, out_scores)


@njit(nogil=True, parallel=True, cache=True)
def search_parallel(queries, lists, bounds, fwd, pruned, cfg, mask, n_chunks, out_ids, out_scores):
    """:func:`search_serial` with the queries dealt round-robin to ``n_chunks`` parallel workers."""
    queries, lists, bounds = QueryBatch(*queries), PostingLists(*lists), Bounds(*bounds)
    fwd, pruned, cfg = Forward(*fwd), Pruned(*pruned), Settings(*cfg)
    nq = queries.indptr.size - 1
    for c in prange(n_chunks):
        _run(queries, lists, bounds, fwd, pruned, cfg, mask, c, nq, n_chunks, out_ids, out_scores)


# ---------------------------------------------------------------------------- few allowed documents
@njit(nogil=True, cache=True)
def _direct_run(queries, fwd, rows, vocab_size, k, q16, out_scale, q_start, q_stop, q_step, out_ids, out_scores):
    """Exact top ``k`` of queries ``q_start, q_start + q_step, ... < q_stop`` among the documents
    ``rows`` only, each scored on its row of the :data:`Forward` copy ``fwd`` (the 8-bit impacts
    or float weights the posting lists hold, times ``out_scale``): a document matches when one of
    its terms has a non-zero (summed) query weight; ties to the lower position."""
    indptr, indices, data = queries.indptr, queries.indices, queries.data
    f_indptr, f_terms, f_w = fwd.indptr, fwd.terms, fwd.weights
    qmap = np.zeros(vocab_size, np.float32)
    hs = np.empty(k, np.float32)
    hd = np.empty(k, np.int64)
    for q in range(q_start, q_stop, q_step):
        a, b = indptr[q], indptr[q + 1]
        for j in range(a, b):
            t = indices[j]
            if t >= 0 and t < vocab_size and data[j] != 0.0:
                qmap[t] += data[j]
        n = 0
        for r in range(rows.size):
            d = rows[r]
            s = np.float32(0.0)
            hit = False
            for p in range(f_indptr[d], f_indptr[d + 1]):
                wq = qmap[f_terms[p]]
                if wq != 0.0:
                    hit = True
                    s += wq * _coarse(f_w[p], q16)
            if hit:
                n = _push(hs, hd, n, k, s, d)
        for j in range(a, b):
            t = indices[j]
            if t >= 0 and t < vocab_size:
                qmap[t] = 0.0
        _drain(hs, hd, n, k, out_ids[q], out_scores[q])
        for i in range(min(n, k)):
            out_scores[q, i] *= out_scale


@njit(nogil=True, cache=True)
def direct_serial(queries, fwd, rows, vocab_size, k, q16, out_scale, out_ids, out_scores):
    """Exact top ``k`` of every query of the :data:`QueryBatch` ``queries`` among the allowed
    positions ``rows`` (int64), scored on the :data:`Forward` copy ``fwd`` (``q16``: its weights
    are 16-bit codes, read as the 8-bit impacts of the lists), into ``out_ids`` / ``out_scores``
    (nq, k). Cost: ``rows.size`` document rows per query, whatever the posting lists' lengths."""
    queries, fwd = QueryBatch(*queries), Forward(*fwd)
    _direct_run(queries, fwd, rows, vocab_size, k, q16, out_scale, 0, queries.indptr.size - 1, 1, out_ids,
                out_scores)


@njit(nogil=True, parallel=True, cache=True)
def direct_parallel(queries, fwd, rows, vocab_size, k, q16, out_scale, n_chunks, out_ids, out_scores):
    """:func:`direct_serial` with the queries dealt round-robin to ``n_chunks`` parallel workers."""
    queries, fwd = QueryBatch(*queries), Forward(*fwd)
    nq = queries.indptr.size - 1
    for c in prange(n_chunks):
        _direct_run(queries, fwd, rows, vocab_size, k, q16, out_scale, c, nq, n_chunks, out_ids, out_scores)


# ---------------------------------------------------------------------------- build helpers
@njit(nogil=True, cache=True)
def term_maxima(term_blocks, block_max):
    """Largest impact of each posting list (0 for empty lists), from the block maxima."""
    v = term_blocks.size - 1
    out = np.zeros(v, np.float32)
    for t in range(v):
        mx = np.float32(0.0)
        for b in range(term_blocks[t], term_blocks[t + 1]):
            if np.float32(block_max[b]) > mx:
                mx = np.float32(block_max[b])
        out[t] = mx
    return out


@njit(nogil=True, cache=True)
def prune_lists(lists, n_postings):
    """Keep the ``n_postings`` highest-impact entries of every list of the :data:`PostingLists`
    ``lists`` (ties to lower positions), in document order, uncompressed. Returns (offsets, docs
    int32, weights float32): the arrays of a :data:`Pruned`."""
    offsets, term_blocks, post_w, quant = lists.offsets, lists.term_blocks, lists.post_w, lists.quant
    v = offsets.size - 1
    new_off = np.zeros(v + 1, np.int64)
    longest = 0
    for t in range(v):
        ln = offsets[t + 1] - offsets[t]
        new_off[t + 1] = new_off[t] + min(ln, n_postings)
        longest = max(longest, ln)
    docs = np.empty(new_off[v], np.int32)
    ws = np.empty(new_off[v], np.float32)  # 8-bit impacts or float weights, as float32
    ld = np.empty(longest, np.int32)
    lw = np.empty(longest, np.float64)
    dbuf = np.empty(BLOCK, np.int64)
    ibuf = np.empty(BLOCK, np.int64)
    for t in range(v):
        ln = offsets[t + 1] - offsets[t]
        for b in range(term_blocks[t], term_blocks[t + 1]):
            n = block_size(offsets, term_blocks, t, b)
            decode_block(lists, t, b, n, dbuf, ibuf)
            r0 = (b - term_blocks[t]) * BLOCK
            for i in range(n):
                ld[r0 + i] = dbuf[i]
                lw[r0 + i] = ibuf[i] if quant else post_w[offsets[t] + r0 + i]
        o = new_off[t]
        if ln <= n_postings:
            for i in range(ln):
                docs[o + i] = ld[i]
                ws[o + i] = lw[i]
            continue
        # stable descending sort by impact, take the head, restore document order
        order = np.argsort(-lw[:ln], kind="mergesort")[:n_postings]
        order.sort()
        for i in range(n_postings):
            docs[o + i] = ld[order[i]]
            ws[o + i] = lw[order[i]]
    return new_off, docs, ws


@njit(nogil=True, cache=True)
def window_maxima(offsets, post_docs, post_w, n_docs, min_df):
    """Per-term maxima over windows of 64 document positions, for terms with at least ``min_df``
    postings (others have an empty range). Returns (offsets into values, values)."""
    v = offsets.size - 1
    nb = (n_docs >> _SHIFT) + 1
    bm_off = np.zeros(v + 1, np.int64)
    for t in range(v):
        bm_off[t + 1] = bm_off[t] + (nb if offsets[t + 1] - offsets[t] >= min_df else 0)
    vals = np.zeros(bm_off[v], post_w.dtype)
    for t in range(v):
        o = bm_off[t]
        if bm_off[t + 1] == o:
            continue
        for p in range(offsets[t], offsets[t + 1]):
            b = o + (post_docs[p] >> _SHIFT)
            if post_w[p] > vals[b]:
                vals[b] = post_w[p]
    return bm_off, vals

