"""Fuse any number of runs: normalise each run per query, then combine; one registry of methods.

Two entry points share the same kernels:

* :func:`fuse` takes runs in the I/O shape ``{qid: {docid: score}}`` and returns one;
* :func:`fuse_arrays` takes ``(nq, K)`` integer id / score arrays (what retrievers return) and is
  what :class:`~lsr.retrievers.hybrid.HybridRetriever` calls per batch.

Pipeline per query: cut every run to its best ``depth`` candidates (order: score descending,
then document id descending, as trec_eval ranks), normalise each run's list
(:mod:`lsr.fusion.normalize`), build the union of candidates, give each document *missing* from
a run that run's **floor**, combine with the method, keep the best ``k`` (same tie order).

Floors. With ``floor="zero"`` (the default, identical to ranx) a missing document counts 0 in
the normalised space for every normaliser -- for ``min-max``/``tmm``/``rank``/``max``/``sum``/
``l2`` that is at or below the run's worst candidate, for ``zmuv`` it is the query's *mean*
score -- and Borda's unranked points ``0.5 - (n-1)/(2C)`` for ``borda``. ``floor="min"`` gives
it instead the run's lowest normalised score for that query (0 when the run has no candidate).
Floors matter to the methods that add scores over all runs (``wsum``, ``sum``); the
``mnz``-family, ``anz``, ``max``, ``min`` and ``med`` aggregate over the runs that retrieved the
document (as ranx), and rank methods give a missing document 0 (``rrf``, ``isr``, ``rbc``) or
Borda's unranked points (``bordafuse``).

Methods (``F`` = the normalised scores of the runs that retrieved the document, ``c`` = their
number, ``r`` = 1-based rank, ``w`` = weights): ``wsum`` sum_i w_i s_i (missing: floor),
``sum`` (CombSUM), ``mnz`` sum(F)*c (CombMNZ), ``anz`` sum(F)/c, ``gmnz`` sum(F)*c^gamma,
``max``, ``min``, ``med``, ``wmnz`` sum(F)*sum(w of those runs), ``mixed`` sum(w F)*sqrt(c),
``rrf`` sum_i w_i/(k+r_i) (k=60; weights default to 1 = plain RRF, otherwise weighted RRF),
``isr`` sum(1/r^2)*c, ``log_isr`` sum(1/r^2)*log(c), ``logn_isr`` sum(1/r^2)*log(c+sigma),
``rbc`` sum (1-phi) phi^(r-1), ``bordafuse`` / ``w_bordafuse`` (weighted) Borda points
C-r+1, missing (C-n+1)/2. All except ``rrf``/``wrrf`` are defined exactly as in ranx.

>>> run = fuse([{"q": {"a": 3.0, "b": 1.0}}, {"q": {"b": 0.9, "c": 0.1}}], norm="min-max", method="wsum")
>>> [(d, round(s, 3)) for d, s in run["q"].items()]
[('b', 1.0), ('a', 1.0), ('c', 0.0)]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lsr.types import DocIds, SearchResults

from lsr.fusion.normalize import canonical_normalizer, normalize

logger = logging.getLogger(__name__)

__all__ = ["FUSIONS", "WEIGHTED", "Candidates", "fuse", "fuse_arrays", "prepare", "combine", "register_fusion",
           "runs_to_arrays", "arrays_to_run"]

Run = dict[str, dict[str, float]]


@dataclass
class Candidates:
    """The union of the runs' candidates of every query, ready for a fusion method.

    ``N`` candidates in all, ``R`` runs. Rows of one query are contiguous (``indptr``).
    """

    indptr: np.ndarray      # (nq + 1,) int64
    ids: np.ndarray         # (N,) int64, ascending within a query
    values: np.ndarray      # (N, R) float64 normalised score, the run's floor where missing
    present: np.ndarray     # (N, R) bool, in run r's normalised list (retrieved; Borda: always)
    ranks: np.ndarray       # (N, R) int64 1-based rank in run r, 0 where missing
    lengths: np.ndarray     # (nq, R) int64 candidates of run r for each query
    query_of: np.ndarray    # (N,) int64 query row of each candidate

    @property
    def run_len(self) -> np.ndarray:
        """(N, R): how many candidates run r has for this candidate's query."""
        return self.lengths[self.query_of]

    @property
    def pool(self) -> np.ndarray:
        """(N,): size of the candidate union of this candidate's query."""
        return np.diff(self.indptr)[self.query_of]

    @property
    def count(self) -> np.ndarray:
        """In how many normalised runs each candidate appears (Borda's cover the whole pool)."""
        return self.present.sum(axis=1)

    @property
    def retrieved(self) -> np.ndarray:
        """(N, R) bool: run r ranked the candidate (what rank-based methods read)."""
        return self.ranks > 0

    @property
    def present_values(self) -> np.ndarray:
        return np.where(self.present, self.values, 0.0)


Fusion = Callable[..., np.ndarray]


def _w(c: Candidates, weights: np.ndarray | None) -> np.ndarray:
    return np.ones(c.values.shape[1]) if weights is None else weights


def wsum(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return c.values @ _w(c, weights)


def comb_sum(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return c.values.sum(axis=1)


def comb_mnz(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return c.present_values.sum(axis=1) * c.count


def comb_anz(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return c.present_values.sum(axis=1) / np.maximum(c.count, 1)


def comb_gmnz(c: Candidates, weights: np.ndarray | None = None, gamma: float = 1.0) -> np.ndarray:
    return c.present_values.sum(axis=1) * c.count.astype(np.float64) ** gamma


def comb_max(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return np.where(c.present, c.values, -np.inf).max(axis=1)


def comb_min(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return np.where(c.present, c.values, np.inf).min(axis=1)


def comb_med(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    if c.present.all():
        return np.median(c.values, axis=1)
    return np.nanmedian(np.where(c.present, c.values, np.nan), axis=1)


def wmnz(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return c.present_values.sum(axis=1) * (c.present * _w(c, weights)).sum(axis=1)


def mixed(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return (c.present_values * _w(c, weights)).sum(axis=1) * np.sqrt(c.count)


def rrf(c: Candidates, weights: np.ndarray | None = None, rrf_k: float = 60) -> np.ndarray:
    contrib = np.where(c.retrieved, 1.0 / (rrf_k + c.ranks), 0.0)
    return contrib @ _w(c, weights)


def _isr_sum(c: Candidates) -> np.ndarray:
    return np.where(c.retrieved, 1.0 / np.maximum(c.ranks, 1).astype(np.float64) ** 2, 0.0).sum(axis=1)


def isr(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return _isr_sum(c) * c.retrieved.sum(axis=1)


def log_isr(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return _isr_sum(c) * np.log(c.retrieved.sum(axis=1))


def logn_isr(c: Candidates, weights: np.ndarray | None = None, sigma: float = 0.01) -> np.ndarray:
    return _isr_sum(c) * np.log(c.retrieved.sum(axis=1) + sigma)


def rbc(c: Candidates, weights: np.ndarray | None = None, phi: float = 0.8) -> np.ndarray:
    return np.where(c.retrieved, (1 - phi) * phi ** (c.ranks - 1.0), 0.0).sum(axis=1)


def _borda_points(c: Candidates) -> np.ndarray:
    pool = c.pool[:, None].astype(np.float64)
    return np.where(c.retrieved, pool - c.ranks + 1, (pool - c.run_len + 1) / 2)


def bordafuse(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return _borda_points(c).sum(axis=1)


def w_bordafuse(c: Candidates, weights: np.ndarray | None = None) -> np.ndarray:
    return _borda_points(c) @ _w(c, weights)


# name -> function(candidates, weights, **params) -> fused score per candidate
FUSIONS: dict[str, Fusion] = {
    "wsum": wsum, "sum": comb_sum, "mnz": comb_mnz, "anz": comb_anz, "gmnz": comb_gmnz,
    "max": comb_max, "min": comb_min, "med": comb_med, "wmnz": wmnz, "mixed": mixed,
    "rrf": rrf, "wrrf": rrf, "isr": isr, "log_isr": log_isr, "logn_isr": logn_isr, "rbc": rbc,
    "bordafuse": bordafuse, "w_bordafuse": w_bordafuse,
}
# methods that take per-run weights; the others refuse them
WEIGHTED = {"wsum", "wmnz", "mixed", "rrf", "wrrf", "w_bordafuse"}
# methods that read only ranks (the normaliser does not change their output)
RANK_BASED = {"rrf", "wrrf", "isr", "log_isr", "logn_isr", "rbc", "bordafuse", "w_bordafuse"}
ALIASES = {"combsum": "sum", "combmnz": "mnz", "combmax": "max", "combmin": "min", "combmed": "med",
           "combanz": "anz", "weighted_rrf": "wrrf", "comb_sum": "sum", "comb_mnz": "mnz"}


def canonical_fusion(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FUSIONS:
        raise ValueError(f"unknown fusion method {name!r}; choose from {', '.join(sorted(FUSIONS))}")
    return key


def register_fusion(name: str, fn: Fusion, weighted: bool = False, rank_based: bool = False) -> None:
    """Add a method: ``fn(candidates: Candidates, weights, **params) -> (N,) scores``."""
    FUSIONS[name] = fn
    if weighted:
        WEIGHTED.add(name)
    if rank_based:
        RANK_BASED.add(name)


# ------------------------------------------------------------------------------ arrays
def _sorted_rows(ids: np.ndarray, scores: np.ndarray, depth: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (score desc, id desc), padding (-1) last, cut to depth; returns ids, scores, n.

    Rows already in that order (what retrievers return) are left alone; only the others are sorted."""
    ids = np.asarray(ids)
    scores = np.asarray(scores, dtype=np.float64)
    if ids.ndim != 2 or ids.shape != scores.shape:
        raise ValueError(f"ids and scores must be (nq, K) arrays of one shape, got {ids.shape} and {scores.shape}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, not {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    valid = ids >= 0
    if not np.isfinite(scores[valid]).all():
        raise ValueError("scores must be finite")
    n = valid.sum(axis=1)
    if ids.shape[1] > 1:
        a, b = scores[:, :-1], scores[:, 1:]
        va, vb = valid[:, :-1], valid[:, 1:]
        in_order = (a > b) | ((a == b) & (ids[:, :-1] > ids[:, 1:]))
        ok = np.where(vb, va & in_order, True).all(axis=1)      # valid pairs ordered, padding only at the end
        bad = np.flatnonzero(~ok)
        if bad.size:
            ids, scores = ids.copy(), scores.copy()
            sub_i, sub_s, sub_v = ids[bad], scores[bad], valid[bad]
            order = np.lexsort((-sub_i, np.where(sub_v, -sub_s, np.inf)), axis=-1)
            ids[bad] = np.take_along_axis(sub_i, order, axis=1)
            scores[bad] = np.take_along_axis(np.where(sub_v, sub_s, 0.0), order, axis=1)
    if depth is not None and ids.shape[1] > depth:
        ids, scores, n = ids[:, :depth], scores[:, :depth], np.minimum(n, depth)
    return ids, scores, n.astype(np.int64)


def prepare(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], norm: str = "min-max",
            depth: int | None = None, floor: str = "zero",
            norm_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> Candidates:
    """Normalise each run and build the candidate union (everything but the method)."""
    from lsr.fusion import _fusion_kernels as K

    if len(ids) != len(scores) or not ids:
        raise ValueError(f"need one score array per id array and at least one run, got {len(ids)} and {len(scores)}")
    if floor not in ("zero", "min"):
        raise ValueError(f"floor must be 'zero' or 'min', not {floor!r}")
    norm = canonical_normalizer(norm)
    if norm_params is None or isinstance(norm_params, Mapping):
        norm_params = [dict(norm_params or {})] * len(ids)
    if len(norm_params) != len(ids):
        raise ValueError(f"{len(norm_params)} normaliser parameter sets for {len(ids)} runs")
    rows = []
    for i, s in zip(ids, scores):
        i, s, nr = _sorted_rows(i, s, depth)
        if i.shape[1] == 0:  # no candidates at all: one padding column keeps the indexing simple
            i, s = np.full((i.shape[0], 1), -1, np.int64), np.zeros((i.shape[0], 1))
        rows.append((i, s, nr))
    nq = rows[0][0].shape[0]
    if any(r[0].shape[0] != nq for r in rows):
        raise ValueError("every run needs the same number of query rows")
    width = max(1, max(r[0].shape[1] for r in rows))
    R = len(rows)
    stack = np.full((R, nq, width), -1, dtype=np.int64)
    for r, (i, _, _) in enumerate(rows):
        stack[r, :, :i.shape[1]] = i
    n = np.stack([r[2] for r in rows]) if nq else np.zeros((R, 0), np.int64)
    indptr, cand_ids, pos = K.union(stack, n)
    counts = np.diff(indptr)
    N = int(indptr[-1])
    qof = np.repeat(np.arange(nq), counts)
    retrieved = pos >= 0
    # a Borda-normalised run scores the whole candidate pool (missing: unranked points), as ranx
    present = np.ones_like(retrieved) if norm == "borda" else retrieved
    values = np.empty((N, R), dtype=np.float64)
    for r, (_, s, nr) in enumerate(rows):
        normed, fl = normalize(norm, s, nr, n_candidates=counts, **norm_params[r])
        if floor == "min" and norm != "borda":
            last = np.maximum(nr - 1, 0)
            fl = np.where(nr > 0, normed[np.arange(nq), last], 0.0)
        p = pos[:, r]
        flat = qof * normed.shape[1] + np.maximum(p, 0)
        values[:, r] = np.where(p >= 0, normed.ravel().take(flat), fl.take(qof))
    return Candidates(indptr, cand_ids, values, present, pos + 1, n.T, qof)


def combine(c: Candidates, method: str = "wsum", weights: Sequence[float] | None = None,
            k: int | None = None, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Apply a fusion method to prepared candidates; ``(ids, scores)`` ``(nq, k)``, padded with -1."""
    from lsr.fusion import _fusion_kernels as K

    method = canonical_fusion(method)
    R = c.values.shape[1]
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (R,) or not np.isfinite(w).all():
            raise ValueError(f"need {R} finite weights, got {list(weights)}")
        if method not in WEIGHTED and not np.allclose(w, w[0]):
            raise ValueError(f"fusion method {method!r} takes no weights (weighted: {', '.join(sorted(WEIGHTED))})")
    fused = np.ascontiguousarray(FUSIONS[method](c, w, **params), dtype=np.float64)
    if k is None:
        k = int(np.diff(c.indptr).max(initial=0))
    return K.top_k(c.indptr, c.ids, fused, max(int(k), 0))


def fuse_arrays(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], norm: str = "min-max",
                method: str = "wsum", weights: Sequence[float] | None = None, depth: int | None = None,
                k: int | None = None, floor: str = "zero",
                norm_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                doc_ids: Sequence[str] | np.ndarray | DocIds | None = None, **params: Any) -> SearchResults:
    """Fuse runs given as ``(nq, K_r)`` id/score arrays (ids: non-negative ints, -1 = padding).

    Ids must be comparable across runs and ordered like the external ids when ties should break
    as trec_eval does. Returns :class:`~lsr.types.SearchResults` of shape ``(nq, k)``, ``k``
    defaulting to the largest candidate pool, over ``doc_ids`` (the external id of each integer
    id; default: the ids themselves). ``params`` go to the method (``rrf_k``, ``gamma``, ``phi``,
    ``sigma``)."""
    c = prepare(ids, scores, norm=norm, depth=depth, floor=floor, norm_params=norm_params)
    out_ids, out_scores = combine(c, method, weights, k=k, **params)
    if doc_ids is None:
        top = max([int(np.max(i)) for i in ids if np.size(i)] + [-1])
        doc_ids = DocIds.positions(top + 1)
    return SearchResults(out_ids, out_scores, doc_ids)


# ------------------------------------------------------------------------------ dict runs
def runs_to_arrays(runs: Sequence[Mapping[str, Mapping[str, float]]], query_ids: Sequence[str] | None = None
                   ) -> tuple[list[str], np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Runs as arrays: ``(qids, vocabulary, ids per run, scores per run)``.

    Document ids become positions in the sorted ``vocabulary`` (so integer order = string order);
    queries are the union of the runs' queries in first-seen order unless ``query_ids`` is given."""
    if query_ids is None:
        seen: dict[str, None] = {}
        for run in runs:
            seen.update(dict.fromkeys(run))
        query_ids = list(seen)
    qpos = {q: i for i, q in enumerate(query_ids)}
    vocab = np.array(sorted({d for run in runs for docs in run.values() for d in docs}), dtype=object)
    dpos = {d: i for i, d in enumerate(vocab)}
    out_ids, out_scores = [], []
    for run in runs:
        lengths = np.zeros(len(query_ids), dtype=np.int64)
        qs, ds, ss = [], [], []
        for q, docs in run.items():
            if q not in qpos:
                continue
            lengths[qpos[q]] = len(docs)
            qs.append(np.full(len(docs), qpos[q], dtype=np.int64))
            ds.append(np.fromiter((dpos[d] for d in docs), dtype=np.int64, count=len(docs)))
            ss.append(np.fromiter(docs.values(), dtype=np.float64, count=len(docs)))
        width = int(lengths.max(initial=0))
        ids = np.full((len(query_ids), width), -1, dtype=np.int64)
        sc = np.zeros((len(query_ids), width), dtype=np.float64)
        if qs:
            q, d, s = np.concatenate(qs), np.concatenate(ds), np.concatenate(ss)
            starts = np.zeros(len(query_ids) + 1, dtype=np.int64)
            np.cumsum(lengths, out=starts[1:])
            order = np.argsort(q, kind="stable")
            q, d, s = q[order], d[order], s[order]
            col = np.arange(q.size) - starts[q]
            ids[q, col] = d
            sc[q, col] = s
        out_ids.append(ids)
        out_scores.append(sc)
    return list(query_ids), vocab, out_ids, out_scores


def arrays_to_run(query_ids: Sequence[str], vocab: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> Run:
    """``(nq, k)`` arrays back to ``{qid: {docid: score}}`` (best first, padding dropped)."""
    run: Run = {}
    for i, q in enumerate(query_ids):
        keep = ids[i] >= 0
        run[q] = dict(zip(vocab[ids[i][keep]].tolist(), scores[i][keep].tolist()))
    return run


def fuse(runs: Sequence[Mapping[str, Mapping[str, float]]], norm: str = "min-max", method: str = "wsum",
         weights: Sequence[float] | None = None, depth: int | None = None, k: int | None = None,
         floor: str = "zero", norm_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
         **params: Any) -> Run:
    """Fuse runs ``{qid: {docid: score}}`` into one run (documents best first).

    Args:
        runs: two or more runs (one is allowed: it is then only normalised and re-cut).
        norm: normaliser name (:data:`lsr.fusion.normalize.NORMALIZERS`), e.g. ``min-max``, ``zmuv``.
        method: fusion name (:data:`FUSIONS`), e.g. ``wsum``, ``mnz``, ``rrf``.
        weights: one per run for weighted methods (default 1 each).
        depth: candidates taken from each run (its best ``depth``); all by default.
        k: documents kept per query in the output; all candidates by default.
        floor: ``"zero"`` (ranx) or ``"min"`` -- the normalised score of a document missing from a run.
        norm_params: normaliser parameters, one dict for all runs or one per run
            (``{"lower_bound": -1}`` for ``tmm`` on cosine scores).
        params: method parameters: ``rrf_k`` (60), ``gamma`` (gmnz), ``phi`` (rbc), ``sigma`` (logn_isr).
    """
    if not runs:
        raise ValueError("no runs to fuse")
    qids, vocab, ids, scores = runs_to_arrays(runs)
    out_ids, out_scores = fuse_arrays(ids, scores, norm=norm, method=method, weights=weights, depth=depth, k=k,
                                      floor=floor, norm_params=norm_params, **params)
    return arrays_to_run(qids, vocab, out_ids, out_scores)
