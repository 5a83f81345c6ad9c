"""Block compression of posting lists (private; used by :mod:`lsr.index.inverted`).

Every posting list is cut into blocks of ``BLOCK`` (128) postings, stored one after another in a
``uint32`` word array (the only thing saved besides the list offsets). In memory the index also
keeps, per block, the last document position (``block_last``, int32: skipping without
decoding), the largest impact (``block_max``: block-max pruning) and where its bits start
(``block_word``); :func:`derive` rebuilds them on load while checking every block. A block's bits
are one little-endian stream:

* a header word: ``gap_width | gap_high << 5 | gap_exceptions << 10 | imp_width << 17 |
  imp_high << 21 | imp_exceptions << 25``;
* the document gaps ``d - previous - 1`` (the previous document of a list's first block is -1,
  of any other block the previous block's last) as a patched frame of reference (PFOR): the
  low ``width`` bits of every value, then the 7-bit positions of the values that need more bits
  ("exceptions"), then their high bits (``high`` bits each);
* for 8-bit indexes, the impacts minus one in the same form (float indexes keep a separate
  float32 array, one weight per posting, in list order).

``width`` is chosen per block to minimise the block's bits (at most 127 exceptions). Two zero
words pad the array's end so that a reader can always load a 64-bit window.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

BLOCK = 128
_U32 = np.uint64(0xFFFFFFFF)

#: The posting lists as every search kernel reads them (built by
#: :meth:`lsr.index.inverted.Postings.kernel_args`): ``offsets`` (int64, vocab + 1: each list's
#: range in posting order), ``term_blocks`` (int64, vocab + 1: each list's range of blocks), per
#: block ``block_last`` (int32: last document position), ``block_max`` (largest impact: uint8
#: codes or float32) and ``block_word`` (int64, blocks + 1: start of the block's bits in
#: ``words``), ``words`` (uint32 bit streams), the lists held decoded in memory ``raw_docs``
#: (int32 positions) / ``raw_imps`` (uint8 impacts; both empty when searching the blocks in
#: place), ``post_w`` (float32 weights in posting order for float indexes, else empty) and
#: ``quant`` (bool: 8-bit impacts inside the blocks).
PostingLists = namedtuple("PostingLists", ["offsets", "term_blocks", "block_last", "block_max", "block_word",
                                           "words", "raw_docs", "raw_imps", "post_w", "quant"])


@njit(inline="always")
def _nbits(x):
    """Number of bits of the non-negative integer ``x`` (0 for 0)."""
    b = 0
    while x > 0:
        b += 1
        x >>= 1
    return b


@njit(inline="always")
def _put(words, pos, v, width):
    """Write the low ``width`` bits (<= 32) of ``v`` at bit ``pos``; return the next position."""
    if width > 0:
        x = np.uint64(v) << np.uint64(pos & 31)
        j = pos >> 5
        words[j] |= np.uint32(x & _U32)
        words[j + 1] |= np.uint32(x >> np.uint64(32))
    return pos + width


@njit(inline="always")
def _get(words, pos, width):
    """Read ``width`` (<= 32) bits at bit ``pos``."""
    j = pos >> 5
    x = (np.uint64(words[j]) | (np.uint64(words[j + 1]) << np.uint64(32))) >> np.uint64(pos & 31)
    return np.int64(x & ((np.uint64(1) << np.uint64(width)) - np.uint64(1)))


@njit(inline="always")
def _choose(vals, n, hist):
    """PFOR parameters of vals[:n]: (width, high bits, exceptions) minimising the bits."""
    hist[:] = 0
    for i in range(n):
        hist[_nbits(vals[i])] += 1
    mx = 0
    for b in range(hist.size):
        if hist[b] > 0:
            mx = b
    best_w = mx
    best = n * mx
    above = 0
    for w in range(mx - 1, -1, -1):
        above += hist[w + 1]
        if above > 127:
            break
        cost = n * w + above * (7 + mx - w)
        if cost < best:
            best = cost
            best_w = w
    exc = 0
    for b in range(best_w + 1, mx + 1):
        exc += hist[b]
    return best_w, mx - best_w, exc


@njit(inline="always")
def _pfor_bits(n, width, high, exc):
    """Bits of ``n`` values in PFOR with low ``width`` bits and ``exc`` exceptions of ``high`` bits."""
    return n * width + exc * (7 + high)


@njit(inline="always")
def _write_pfor(words, pos, vals, n, width, high, exc):
    """Write ``vals[:n]`` as PFOR (low bits, exception positions, high bits) at bit ``pos`` of
    the zeroed ``words``; return the next bit position."""
    mask = (np.int64(1) << width) - 1
    for i in range(n):
        pos = _put(words, pos, vals[i] & mask, width)
    if exc > 0:
        for i in range(n):
            if (vals[i] >> width) > 0:
                pos = _put(words, pos, i, 7)
        for i in range(n):
            if (vals[i] >> width) > 0:
                pos = _put(words, pos, vals[i] >> width, high)
    return pos


@njit(inline="always")
def _read_pfor(words, pos, out, n, width, high, exc):
    """Read ``n`` PFOR values written by :func:`_write_pfor` at bit ``pos`` into ``out[:n]``;
    return the next bit position."""
    # unsigned positions: no negative-index handling, so the loop vectorises (about 1 ns a value)
    w = np.uint64(width)
    mask = (np.uint64(1) << w) - np.uint64(1)
    base = np.uint64(pos)
    for i in range(n):
        p = base + np.uint64(i) * w
        j = p >> np.uint64(5)
        x = (np.uint64(words[j]) | (np.uint64(words[j + np.uint64(1)]) << np.uint64(32))) >> (p & np.uint64(31))
        out[i] = np.int64(x & mask)
    pos += n * width
    if exc > 0:
        hp = pos + 7 * exc
        for e in range(exc):
            i = _get(words, pos + 7 * e, 7)
            out[i] |= _get(words, hp + high * e, high) << width
        pos = hp + high * exc
    return pos


@njit(inline="always")
def block_size(offsets, term_blocks, t, b):
    """Postings in block ``b`` of term ``t``."""
    return min(BLOCK, offsets[t + 1] - offsets[t] - (b - term_blocks[t]) * BLOCK)


@njit(inline="always")
def decode_block(lists, t, b, n, dbuf, ibuf):
    """Decode block ``b`` (of term ``t``, ``n`` postings) of the :data:`PostingLists` ``lists``
    into document positions ``dbuf[:n]`` and, when ``lists.quant``, 8-bit impacts ``ibuf[:n]``.
    When the lists are held decoded in memory (``raw_docs`` / ``raw_imps`` not empty) the block
    is copied from there instead."""
    raw_docs = lists.raw_docs
    if raw_docs.size > 0:
        raw_imps = lists.raw_imps
        p0 = lists.offsets[t] + (b - lists.term_blocks[t]) * BLOCK
        for i in range(n):
            dbuf[i] = raw_docs[p0 + i]
        if lists.quant:
            for i in range(n):
                ibuf[i] = raw_imps[p0 + i]
        return
    _decode_stream(lists, t, b, n, dbuf, ibuf)


@njit(inline="always")
def _decode_stream(lists, t, b, n, dbuf, ibuf):
    """:func:`decode_block` from the bit stream ``lists.words`` (ignores the decoded copy)."""
    words = lists.words
    w0 = lists.block_word[b]
    h = np.int64(words[w0])
    pos = w0 * 32 + 32
    pos = _read_pfor(words, pos, dbuf, n, h & 31, (h >> 5) & 31, (h >> 10) & 127)
    prev = np.int64(-1) if b == lists.term_blocks[t] else np.int64(lists.block_last[b - 1])
    for i in range(n):
        prev += dbuf[i] + 1
        dbuf[i] = prev
    if lists.quant:
        _read_pfor(words, pos, ibuf, n, (h >> 17) & 15, (h >> 21) & 15, (h >> 25) & 127)
        for i in range(n):
            ibuf[i] += 1


@njit(inline="always")
def _block_values(docs, imps, p0, n, prev, quant, gaps, vals):
    """Gaps (and, when ``quant``, impacts minus one) of the ``n`` postings from ``p0``, the
    previous document being ``prev``; returns the block's last document."""
    for i in range(n):
        d = np.int64(docs[p0 + i])
        gaps[i] = d - prev - 1
        prev = d
        if quant:
            vals[i] = np.int64(imps[p0 + i]) - 1
    return prev


@njit(nogil=True, cache=True)
def encode(offsets, docs, imps, quant):
    """Compress term-major postings (``imps``: uint8 impacts, used when ``quant``).

    Returns ``(term_blocks, block_last, block_word, words)``; ``block_word`` has one extra entry
    (the end of the stream)."""
    v = offsets.size - 1
    term_blocks = np.zeros(v + 1, np.int64)
    for t in range(v):
        term_blocks[t + 1] = term_blocks[t] + (offsets[t + 1] - offsets[t] + BLOCK - 1) // BLOCK
    nb = term_blocks[v]
    block_last = np.empty(nb, np.int32)
    block_word = np.zeros(nb + 1, np.int64)
    headers = np.empty(nb, np.uint32)
    gaps = np.empty(BLOCK, np.int64)
    vals = np.empty(BLOCK, np.int64)
    hist = np.zeros(33, np.int64)
    for t in range(v):  # pass 1: parameters and sizes
        prev = np.int64(-1)
        for b in range(term_blocks[t], term_blocks[t + 1]):
            p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
            n = block_size(offsets, term_blocks, t, b)
            prev = _block_values(docs, imps, p0, n, prev, quant, gaps, vals)
            block_last[b] = prev
            gw, gh, ge = _choose(gaps, n, hist)
            bits = 32 + _pfor_bits(n, gw, gh, ge)
            iw, ih, ie = 0, 0, 0
            if quant:
                iw, ih, ie = _choose(vals, n, hist)
                bits += _pfor_bits(n, iw, ih, ie)
            headers[b] = np.uint32(gw | (gh << 5) | (ge << 10) | (iw << 17) | (ih << 21) | (ie << 25))
            block_word[b + 1] = block_word[b] + (bits + 31) // 32
    words = np.zeros(block_word[nb] + 2, np.uint32)
    for t in range(v):  # pass 2: the bits
        prev = np.int64(-1)
        for b in range(term_blocks[t], term_blocks[t + 1]):
            p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
            n = block_size(offsets, term_blocks, t, b)
            prev = _block_values(docs, imps, p0, n, prev, quant, gaps, vals)
            h = np.int64(headers[b])
            words[block_word[b]] = headers[b]
            pos = block_word[b] * 32 + 32
            pos = _write_pfor(words, pos, gaps, n, h & 31, (h >> 5) & 31, (h >> 10) & 127)
            if quant:
                _write_pfor(words, pos, vals, n, (h >> 17) & 15, (h >> 21) & 15, (h >> 25) & 127)
    return term_blocks, block_last, block_word, words


@njit(nogil=True, cache=True)
def block_maxima(offsets, term_blocks, weights):
    """Largest weight of every block (weights in list order)."""
    v = offsets.size - 1
    out = np.zeros(term_blocks[v], weights.dtype)
    for t in range(v):
        for b in range(term_blocks[t], term_blocks[t + 1]):
            p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
            mx = weights[p0]
            for p in range(p0 + 1, p0 + block_size(offsets, term_blocks, t, b)):
                if weights[p] > mx:
                    mx = weights[p]
            out[b] = mx
    return out


@njit(nogil=True, cache=True)
def decode_all(lists):
    """Decompress the bit streams of the :data:`PostingLists` ``lists`` (not its decoded copy) to
    term-major arrays ``(docs int32, impacts uint8)`` (impacts empty unless ``lists.quant``)."""
    offsets, term_blocks, quant = lists.offsets, lists.term_blocks, lists.quant
    v = offsets.size - 1
    nnz = offsets[v]
    docs = np.empty(nnz, np.int32)
    imps = np.empty(nnz if quant else 0, np.uint8)
    dbuf = np.empty(BLOCK, np.int64)
    ibuf = np.empty(BLOCK, np.int64)
    for t in range(v):
        for b in range(term_blocks[t], term_blocks[t + 1]):
            p0 = offsets[t] + (b - term_blocks[t]) * BLOCK
            n = block_size(offsets, term_blocks, t, b)
            _decode_stream(lists, t, b, n, dbuf, ibuf)
            for i in range(n):
                docs[p0 + i] = dbuf[i]
                if quant:
                    imps[p0 + i] = ibuf[i]
    return docs, imps


@njit(nogil=True, cache=True)
def derive(offsets, words, quant, n_docs):
    """Rebuild the per-block tables of a stored index from its bit streams, checking every block.

    Returns ``(term_blocks, block_last, block_max, block_word, bad)``: ``bad`` is -1 when every
    block lies inside ``words`` (which ends with the two padding words), its header agrees with its
    size, and it decodes to ascending positions below ``n_docs`` (8-bit impacts in 1..255); else
    the number of the first bad block (the tables are then incomplete). ``block_max`` holds the
    8-bit maxima (zeros for float indexes, whose maxima come from their weights)."""
    v = offsets.size - 1
    term_blocks = np.zeros(v + 1, np.int64)
    for t in range(v):
        ln = offsets[t + 1] - offsets[t]
        if ln < 0:
            return term_blocks, np.empty(0, np.int32), np.empty(0, np.uint8), np.empty(0, np.int64), 0
        term_blocks[t + 1] = term_blocks[t] + (ln + BLOCK - 1) // BLOCK
    nb = term_blocks[v]
    block_last = np.zeros(nb, np.int32)
    block_max = np.zeros(nb, np.uint8)
    block_word = np.zeros(nb + 1, np.int64)
    dbuf = np.empty(BLOCK, np.int64)
    ibuf = np.empty(BLOCK, np.int64)
    # the tables filled so far, as the block decoder reads them (no decoded copy, no float weights)
    lists = PostingLists(offsets, term_blocks, block_last, block_max, block_word, words, np.empty(0, np.int32),
                         np.empty(0, np.uint8), np.empty(0, np.float32), quant)
    end = words.size - 2
    if offsets[0] != 0 or end < 0:
        return term_blocks, block_last, block_max, block_word, 0
    for t in range(v):
        prev = -1
        for b in range(term_blocks[t], term_blocks[t + 1]):
            w0 = block_word[b]
            if w0 >= end:
                return term_blocks, block_last, block_max, block_word, b
            h = np.int64(words[w0])
            n = block_size(offsets, term_blocks, t, b)
            if (h >> 10) & 127 > n or (h >> 25) & 127 > n or (not quant and (h >> 17) != 0):
                return term_blocks, block_last, block_max, block_word, b
            bits = 32 + _pfor_bits(n, h & 31, (h >> 5) & 31, (h >> 10) & 127)
            if quant:
                bits += _pfor_bits(n, (h >> 17) & 15, (h >> 21) & 15, (h >> 25) & 127)
            block_word[b + 1] = w0 + (bits + 31) // 32
            if block_word[b + 1] > end:
                return term_blocks, block_last, block_max, block_word, b
            if b > term_blocks[t]:
                block_last[b - 1] = prev  # decode_block reads the previous block's last position
            _decode_stream(lists, t, b, n, dbuf, ibuf)
            mx = 0
            for i in range(n):
                d = dbuf[i]
                if d <= prev or d >= n_docs:
                    return term_blocks, block_last, block_max, block_word, b
                prev = d
                if quant:
                    if ibuf[i] < 1 or ibuf[i] > 255:
                        return term_blocks, block_last, block_max, block_word, b
                    mx = max(mx, ibuf[i])
            block_last[b] = prev
            block_max[b] = mx
    if block_word[nb] != end:
        return term_blocks, block_last, block_max, block_word, nb
    return term_blocks, block_last, block_max, block_word, -1
