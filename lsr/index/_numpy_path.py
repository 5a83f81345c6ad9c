"""Small indexes without Numba (private): the block format of :mod:`lsr.index._codec_kernels`
read with numpy, and the exhaustive scan of :mod:`lsr.index._exhaustive_kernels` in numpy.

On a small index Numba's fixed costs (importing it, then loading or compiling each kernel) are
most of what a fresh process spends opening and searching it, while these functions take
milliseconds there (docs/startup.md has the figures); on large indexes the compiled kernels are
many times faster. :meth:`lsr.index.inverted.InvertedIndex.load` reads indexes of at most
``NUMPY_LOAD_POSTINGS`` postings with them. Results are the kernels', array for array and bit
for bit, including which block is reported bad (tests/test_numpy_path.py compares them).
"""
from __future__ import annotations

import numpy as np

BLOCK = 128  # postings per block, as lsr.index._codec_kernels.BLOCK (a test checks they agree)


def _bits(w64: np.ndarray, pos: np.ndarray, width: np.ndarray) -> np.ndarray:
    """``width`` (<= 32) bits at each bit position ``pos`` of the little-endian word stream."""
    j = pos >> 5
    x = (w64[j] | (w64[j + 1] << np.uint64(32))) >> (pos & 31).astype(np.uint64)
    return (x & ((np.uint64(1) << width.astype(np.uint64)) - np.uint64(1))).astype(np.int64)


def _read_pfor(w64: np.ndarray, start: np.ndarray, n: np.ndarray, first: np.ndarray, width: np.ndarray,
               high: np.ndarray, exc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PFOR values of every block at once (block ``b``: ``n[b]`` values from bit ``start[b]``,
    stored from ``first[b]`` in the output); returns ``(values, bit position after each block)``."""
    blk = np.repeat(np.arange(n.size), n)
    i = np.arange(blk.size) - first[blk]
    vals = _bits(w64, start[blk] + i * width[blk], width[blk])
    low_end = start + n * width
    eb = np.repeat(np.arange(n.size), exc)
    if eb.size:
        e = np.arange(eb.size) - np.repeat(np.cumsum(exc) - exc, exc)
        at = _bits(w64, low_end[eb] + 7 * e, np.full(eb.size, 7))
        hi = _bits(w64, low_end[eb] + 7 * exc[eb] + high[eb] * e, high[eb])
        keep = at < n[eb]  # the kernel's out-of-range exception lands past the block and is never read
        np.bitwise_or.at(vals, first[eb][keep] + at[keep], hi[keep] << width[eb][keep])
    return vals, low_end + exc * (7 + high)


def _chain(words: np.ndarray, n: np.ndarray, quant: bool) -> tuple[np.ndarray, int]:
    """Where each block's bits start (one extra entry: the end), walking header to header, and
    the first block that does not fit inside ``words`` or whose header disagrees with its size
    (``n.size`` when all do). Sequential by nature: a block's length is in its header."""
    end = words.size - 2
    mv = memoryview(np.ascontiguousarray(words)).cast("B").cast("I")
    sizes = n.tolist()
    starts = [0] * (len(sizes) + 1)
    w = 0
    for b, m in enumerate(sizes):
        if w >= end:
            return np.asarray(starts[:b + 1], np.int64), b
        h = mv[w]
        ge, ie = (h >> 10) & 127, (h >> 25) & 127
        if ge > m or ie > m or (not quant and h >> 17):
            return np.asarray(starts[:b + 1], np.int64), b
        bits = 32 + m * (h & 31) + ge * (7 + ((h >> 5) & 31))
        if quant:
            bits += m * ((h >> 17) & 15) + ie * (7 + ((h >> 21) & 15))
        w += (bits + 31) >> 5
        if w > end:
            return np.asarray(starts[:b + 1], np.int64), b
        starts[b + 1] = w
    return np.asarray(starts, np.int64), len(sizes)


def derive(offsets: np.ndarray, words: np.ndarray, quant: bool, n_docs: int) -> tuple:
    """:func:`lsr.index._codec_kernels.derive` (same tables, same ``bad``), plus the decoded
    lists it had to read anyway: ``(term_blocks, block_last, block_max, block_word, bad, docs
    int32, impacts uint8)`` (impacts empty unless ``quant``; all incomplete when ``bad >= 0``)."""
    offsets = np.asarray(offsets, np.int64)
    v = offsets.size - 1
    lens = np.diff(offsets)
    none = (np.empty(0, np.int32), np.empty(0, np.uint8), np.zeros(1, np.int64))
    if (lens < 0).any():
        return (np.zeros(v + 1, np.int64), *none, 0, np.empty(0, np.int32), np.empty(0, np.uint8))
    per_term = (lens + BLOCK - 1) // BLOCK
    term_blocks = np.concatenate(([0], np.cumsum(per_term))).astype(np.int64)
    nb = int(term_blocks[-1])
    if offsets[0] != 0 or words.size < 2:
        return (term_blocks, *none, 0, np.empty(0, np.int32), np.empty(0, np.uint8))
    bt = np.repeat(np.arange(v), per_term)  # term of each block
    n = np.minimum(BLOCK, lens[bt] - (np.arange(nb) - term_blocks[bt]) * BLOCK)
    block_word, ok = _chain(words, n, quant)  # blocks [0, ok) are well formed
    bad = -1 if ok == nb else ok
    n = n[:ok]
    first = np.cumsum(n) - n  # the block's first posting (postings are in block order)
    w64 = np.asarray(words, np.uint64)
    h = w64[block_word[:ok]].astype(np.int64)
    gaps, pos = _read_pfor(w64, block_word[:ok] * 32 + 32, n, first, h & 31, (h >> 5) & 31, (h >> 10) & 127)
    # positions: prev + gap + 1 within each list, prev = -1 before a list (int64 wraps as in the kernel)
    c = np.cumsum(gaps + 1)
    start = np.repeat(offsets[:-1], lens)[:c.size]
    before = np.where(start > 0, c[np.maximum(start - 1, 0)], 0)
    docs = c - before - 1
    prev = np.empty_like(docs)
    prev[1:] = docs[:-1]
    prev[start == np.arange(docs.size)] = -1
    wrong = (docs <= prev) | (docs >= n_docs)
    imps = np.empty(0, np.uint8)
    block_max = np.zeros(ok, np.uint8)
    if quant:
        iv, _ = _read_pfor(w64, pos, n, first, (h >> 17) & 15, (h >> 21) & 15, (h >> 25) & 127)
        iv += 1
        wrong |= iv > 255
        imps = iv.astype(np.uint8)
    blk = np.repeat(np.arange(ok), n)
    if wrong.any():
        bad = int(blk[np.argmax(wrong)])
    elif bad < 0 and block_word[-1] != words.size - 2:
        bad = nb
    if bad >= 0:
        return term_blocks, np.empty(0, np.int32), block_max, block_word, bad, np.empty(0, np.int32), imps
    block_last = docs[first + n - 1].astype(np.int32) if nb else np.empty(0, np.int32)
    if quant and nb:
        block_max = np.maximum.reduceat(imps, first)
    return term_blocks, block_last, block_max, block_word, -1, docs.astype(np.int32), imps


def block_maxima(offsets: np.ndarray, term_blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`lsr.index._codec_kernels.block_maxima`: largest weight of every block."""
    lens = np.diff(offsets)
    per_term = np.diff(term_blocks)
    bt = np.repeat(np.arange(lens.size), per_term)
    first = offsets[:-1][bt] + (np.arange(bt.size) - term_blocks[:-1][bt]) * BLOCK
    if not first.size:
        return np.zeros(0, weights.dtype)
    return np.maximum.reduceat(np.asarray(weights), first)


def term_maxima(term_blocks: np.ndarray, block_max: np.ndarray) -> np.ndarray:
    """:func:`lsr.index._maxscore_kernels.term_maxima`: each list's largest impact as float32,
    0 for empty lists (and never below 0)."""
    out = np.zeros(term_blocks.size - 1, np.float32)
    has = np.diff(term_blocks) > 0
    if has.any():
        out[has] = np.maximum(np.maximum.reduceat(block_max.astype(np.float32), term_blocks[:-1][has]), 0)
    return out


def check_forward(indptr: np.ndarray, terms: np.ndarray, vocab_size: int) -> int:
    """:func:`lsr.index._exhaustive_kernels.check_forward`: -1, or the first malformed row."""
    n_docs = indptr.size - 1
    a, b = indptr[:-1], indptr[1:]
    bad_row = (b < a) | (a < 0) | (b > terms.size)
    if bad_row.any():
        first_bad = int(np.argmax(bad_row))
        n_docs = first_bad  # rows before it are well formed; check their terms below
    t = np.asarray(terms[:int(indptr[n_docs]) if n_docs else 0], np.int64)
    row = np.repeat(np.arange(n_docs), np.diff(indptr[:n_docs + 1]))
    wrong = t >= vocab_size
    if t.size > 1:
        same = row[1:] == row[:-1]
        wrong[1:] |= same & (t[1:] <= t[:-1])
    wrong |= t < 0
    if wrong.any():
        return int(row[np.argmax(wrong)])
    return first_bad if bad_row.any() else -1


def exhaustive_search(q_indptr: np.ndarray, q_indices: np.ndarray, q_data: np.ndarray, offsets: np.ndarray,
                      docs: np.ndarray, weights: np.ndarray, n_docs: int, positive: bool, k: int,
                      out_ids: np.ndarray, out_scores: np.ndarray, allowed: np.ndarray | None = None) -> None:
    """:func:`lsr.index._exhaustive_kernels.search_serial` over lists held decoded (``docs``
    int32 positions, ``weights`` float32 or uint8 impacts, both in posting order): the same
    float32 sums in the same order, matches (score > 0 when every weight is positive, else every
    document a query term reaches), ties to the lower position, ``-1`` / ``0.0`` padding.
    ``allowed`` (bool, n_docs; None = all): only those documents are returned."""
    # plain arrays: slicing a memory map goes through Python code (most of the time otherwise)
    offsets, docs, weights = np.asarray(offsets), np.asarray(docs), np.asarray(weights)
    as_f32 = weights.dtype != np.float32
    vocab = offsets.size - 1
    acc = np.zeros(n_docs, np.float32)
    reached = np.zeros(n_docs, bool)
    for q in range(q_indptr.size - 1):
        a, b = q_indptr[q], q_indptr[q + 1]
        terms, qw = q_indices[a:b], q_data[a:b]
        inside = (terms >= 0) & (terms < vocab)
        pos = positive and not (qw[inside] < 0).any()
        for t, w in zip(terms[inside].tolist(), qw[inside]):
            lo, hi = offsets[t], offsets[t + 1]
            if w == 0 or lo == hi:
                continue
            d = docs[lo:hi]
            acc[d] += w * (weights[lo:hi].astype(np.float32) if as_f32 else weights[lo:hi])
            if not pos:
                reached[d] = True
        hit = np.flatnonzero(acc if pos else reached)  # positive: a reached score is > 0 or never counts
        cand = hit if allowed is None else hit[allowed[hit]]  # a document's sum is the same either way
        s = acc[cand]
        if cand.size > k:  # keep the k best (and every tie of the k-th) before the exact sort
            keep = s >= -np.partition(-s, k - 1)[k - 1]
            cand, s = cand[keep], s[keep]
        top = np.lexsort((cand, -s))[:k]
        m = top.size
        out_ids[q, :m], out_scores[q, :m] = cand[top], s[top]
        out_ids[q, m:], out_scores[q, m:] = -1, 0.0
        acc[hit] = 0.0
        if not pos:
            reached[hit] = False
