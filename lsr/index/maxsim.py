"""Compact multi-vector storage and exact MaxSim (late-interaction / Chamfer) scoring.

A set of multi-vectors is one flat ``(total_tokens, dim)`` matrix plus ``int64`` offsets
(``vectors[offsets[i]:offsets[i+1]]`` belongs to item ``i``). Documents are stored in float16
and memory-mapped; brute force widens blocks to float32, scores all query tokens of a batch
against a block with one BLAS product and reduces it (max per document, sum per query) with a
Numba kernel while it is in cache, so it runs near the CPU's matrix-product peak.

MaxSim(q, d) = sum over query vectors of the maximum inner product with any document vector.

>>> import numpy as np
>>> docs = MultiVectors.from_list([np.eye(2, dtype=np.float32), np.array([[0.6, 0.8]], np.float32)])
>>> q = MultiVectors.from_list([np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)])
>>> ids, scores = maxsim_search(q, docs, k=2)
>>> ids.tolist(), [[round(float(s), 3) for s in row] for row in scores]
([[0, 1]], [[2.0, 1.4]])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lsr.index._allowed import check_allowed
from lsr.io.manifest import positive_int
from lsr.index._heap_kernels import PARALLEL_LOCK, set_threads
from lsr.index._maxsim_kernels import _block_max, _rerank_groups, _segment_max_sum, _top_k_rows, _widen_f16  # noqa: F401
from lsr.types import DocIds, MultiVectors, SearchResults

__all__ = ["MultiVectors", "maxsim_scores", "maxsim_search", "maxsim_rerank"]

BLOCK_TOKENS = 16384  # at most this many document tokens per matrix product
QUERY_TOKENS = 4096  # query tokens scored together per matrix product
SIMS_FLOATS = 1 << 24  # similarities per product (64 MB: larger blocks keep BLAS at its peak)


def _check(queries: MultiVectors, docs: MultiVectors) -> None:
    if not isinstance(queries, MultiVectors) or not isinstance(docs, MultiVectors):
        raise TypeError("queries and documents must be MultiVectors")
    if len(queries) and len(docs) and queries.dim != docs.dim:
        raise ValueError(f"query dimension {queries.dim} != document dimension {docs.dim}")
    if not np.isfinite(queries.vectors).all():
        raise ValueError("query vectors must be finite (found NaN or inf)")


def maxsim_scores(queries: MultiVectors, docs: MultiVectors, block_tokens: int = BLOCK_TOKENS) -> np.ndarray:
    """Exact MaxSim of every query against every document: ``float32 (nq, n_docs)``.

    All query tokens of a group (up to ``QUERY_TOKENS``) are scored against a block of document
    tokens with one BLAS product (float16 stores are widened per block by a Numba kernel); a
    Numba kernel then takes the maximum over each document's rows and sums it over each query's
    columns, while the block is still in cache. Documents without vectors score ``-inf``;
    queries without vectors score 0 everywhere.
    """
    _check(queries, docs)
    nq, nd = len(queries), len(docs)
    out = np.zeros((nq, nd), dtype=np.float32)
    if nq == 0 or nd == 0:
        return out
    q = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    q_off = np.ascontiguousarray(queries.offsets)
    d_off = np.ascontiguousarray(docs.offsets)
    half = docs.vectors.dtype == np.float16
    # the Numba kernels here are serial: BLAS's threads own the cores
    for g0, g1 in _query_groups(q_off):
        qa, qb = int(q_off[g0]), int(q_off[g1])
        if qb == qa:
            continue
        q_t = q[qa:qb].T
        local_q = np.ascontiguousarray(q_off[g0:g1 + 1] - qa)
        # document blocks: about SIMS_FLOATS similarities (and at most block_tokens tokens) each
        step = max(1, min(int(block_tokens), SIMS_FLOATS // (qb - qa)))
        d0 = 0
        while d0 < nd:
            d1 = max(int(np.searchsorted(d_off, d_off[d0] + step, side="right")) - 1, d0 + 1)
            d1 = min(d1, nd)
            a, b = int(d_off[d0]), int(d_off[d1])
            if b > a:
                if half:
                    block = np.empty((b - a, docs.dim), np.float32)
                    _widen_f16(np.asarray(docs.vectors[a:b]).view(np.uint16), block)
                else:
                    block = np.asarray(docs.vectors[a:b], dtype=np.float32)
                sims = block @ q_t  # (block tokens, group query tokens)
                _segment_max_sum(sims, np.ascontiguousarray(d_off[d0:d1 + 1] - a), local_q, out, g0, d0)
            d0 = d1
    out[:, docs.lengths == 0] = -np.inf
    return out


def _query_groups(q_off: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive query ranges of about ``QUERY_TOKENS`` tokens (at least one query each)."""
    nq, groups, start = q_off.size - 1, [], 0
    while start < nq:
        end = int(np.searchsorted(q_off, q_off[start] + QUERY_TOKENS, side="right")) - 1
        end = min(max(end, start + 1), nq)
        groups.append((start, end))
        start = end
    return groups


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, best first, ties by lower position; non-finite entries (NaN, +-inf) are
    skipped, rows with fewer than ``k`` finite entries are padded with -1 / 0."""
    nq, n = scores.shape
    ids = np.full((nq, k), -1, dtype=np.int64)
    out = np.zeros((nq, k), dtype=np.float32)
    kk = min(k, n)
    if kk == 0:
        return ids, out
    _top_k_rows(np.ascontiguousarray(scores, dtype=np.float32), kk, ids, out)
    return ids, out


def _doc_ids(docs: MultiVectors, doc_ids: Sequence[str] | np.ndarray | DocIds | None) -> DocIds:
    if doc_ids is None:
        return DocIds.positions(len(docs))
    doc_ids = DocIds(doc_ids)
    if len(doc_ids) != len(docs):
        raise ValueError(f"{len(doc_ids)} doc_ids for {len(docs)} documents")
    return doc_ids


def select(docs: MultiVectors, rows: np.ndarray) -> MultiVectors:
    """The documents at positions ``rows`` (in that order) as a new :class:`MultiVectors` (a copy)."""
    lens = np.diff(docs.offsets)[rows]
    offsets = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    tokens = np.repeat(docs.offsets[rows] - offsets[:-1], lens) + np.arange(int(offsets[-1]))
    return MultiVectors(np.asarray(docs.vectors[tokens]), offsets)


def maxsim_search(queries: MultiVectors, docs: MultiVectors, k: int = 10, block_tokens: int = BLOCK_TOKENS,
                  doc_ids: Sequence[str] | np.ndarray | DocIds | None = None,
                  allowed: np.ndarray | None = None) -> SearchResults:
    """Exact brute-force MaxSim top-``k`` (``k`` capped at the number of documents), padded with
    -1 where documents have no vectors; ``doc_ids`` default to the positions.

    ``allowed`` (bool, or uint8 with non-zero = allowed, one per document; ``None``: all): the
    exact top-``k`` among those documents only; when at most half are allowed only they are
    scored (their vectors gathered first), else all are scored and the others dropped."""
    k = min(positive_int(k, "k"), len(docs))
    mask = check_allowed(allowed, len(docs))
    if mask is None:
        ids, scores = _top_k(maxsim_scores(queries, docs, block_tokens), k)
        return SearchResults(ids, scores, _doc_ids(docs, doc_ids))
    rows = np.flatnonzero(mask)
    if 2 * rows.size > len(docs):
        all_scores = maxsim_scores(queries, docs, block_tokens)
        all_scores[:, ~mask] = -np.inf  # non-finite scores are never returned
        ids, scores = _top_k(all_scores, k)
    else:
        sub, scores = _top_k(maxsim_scores(queries, select(docs, rows), block_tokens), k)
        ids = np.where(sub >= 0, rows[np.maximum(sub, 0)] if rows.size else -1, -1)  # rows ascend: ties kept
    return SearchResults(ids, scores, _doc_ids(docs, doc_ids))


def maxsim_rerank(queries: MultiVectors, docs: MultiVectors, candidates: np.ndarray, k: int = 10,
                  threads: int = 1, doc_ids: Sequence[str] | np.ndarray | DocIds | None = None,
                  allowed: np.ndarray | None = None) -> SearchResults:
    """Re-rank candidate positions (``(nq, c)``, ``-1`` = none) by exact MaxSim; keep the top ``k``.
    Candidates that ``allowed`` (bool or uint8 per document; ``None``: all) excludes are dropped.

    The (query, candidate) pairs of the batch are grouped by document, so a Numba kernel reads
    (and widens, for a float16 store) each candidate document once for all the queries that
    retrieved it. Duplicate candidates count once; candidates without vectors are dropped.
    """
    _check(queries, docs)
    candidates = np.asarray(candidates)
    if candidates.size and not np.issubdtype(candidates.dtype, np.integer):
        raise TypeError(f"candidates must be integer positions, got dtype {candidates.dtype}")
    candidates = candidates.astype(np.int64, copy=False)
    if candidates.ndim != 2 or candidates.shape[0] != len(queries):
        raise ValueError(f"candidates must have shape ({len(queries)}, c), got {candidates.shape}")
    k = min(positive_int(k, "k"), len(docs))
    doc_ids = _doc_ids(docs, doc_ids)
    if candidates.size and (int(candidates.max()) >= len(docs) or int(candidates.min()) < -1):
        bad = int(candidates.max()) if int(candidates.max()) >= len(docs) else int(candidates.min())
        raise ValueError(f"candidate position {bad} out of range for {len(docs)} documents (-1 = none)")
    mask = check_allowed(allowed, len(docs))
    if mask is not None:
        candidates = np.where(mask[np.maximum(candidates, 0)], candidates, -1)
    nq = len(queries)
    ids = np.full((nq, k), -1, dtype=np.int64)
    scores = np.zeros((nq, k), dtype=np.float32)
    if nq == 0 or candidates.shape[1] == 0 or k == 0:
        return SearchResults(ids, scores, doc_ids)
    cand = np.sort(candidates, axis=1)
    cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1  # duplicates count once
    lens = np.where(cand >= 0, docs.offsets[cand + 1] - docs.offsets[np.maximum(cand, 0)], 0)
    cand[lens == 0] = -1
    q = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    # (query, slot) pairs grouped by document: each candidate document is read (and widened) once
    # for all the queries of the batch that retrieved it
    rows, slots = np.nonzero(cand >= 0)
    pair_docs = cand[rows, slots]
    order = np.argsort(pair_docs, kind="stable")
    uniq, starts = np.unique(pair_docs[order], return_index=True)
    groups = np.append(starts, order.size).astype(np.int64)
    pair_q, pair_slot = rows[order].astype(np.int64), slots[order].astype(np.int64)
    q_off = np.ascontiguousarray(queries.offsets)
    d_off = np.ascontiguousarray(docs.offsets)
    uniq = uniq.astype(np.int64)
    max_len = int((d_off[uniq + 1] - d_off[uniq]).max()) if uniq.size else 1
    max_tokens = int(np.add.reduceat(np.diff(q_off)[pair_q], groups[:-1]).max()) if uniq.size else 1
    with PARALLEL_LOCK:  # numba's default threading layer runs one parallel region at a time
        n_threads = set_threads(threads)
        args = (d_off, uniq, groups, pair_q, pair_slot, out, max(max_len, 1), max(max_tokens, 1),
                max(1, min(16 * n_threads, uniq.size)))
        if docs.vectors.dtype == np.float16:
            _rerank_groups(q, q_off, np.asarray(docs.vectors).view(np.uint16), *args)
        else:
            _rerank_groups(q, q_off, np.ascontiguousarray(docs.vectors, dtype=np.float32), *args)
    # rows of cand ascend, so ties by column are ties by document; dropped slots are -inf
    cols = np.full((nq, k), -1, dtype=np.int64)
    _top_k_rows(out, min(k, out.shape[1]), cols, scores)
    ids[cols >= 0] = np.take_along_axis(cand, np.maximum(cols, 0), axis=1)[cols >= 0]
    return SearchResults(ids, scores, doc_ids)

