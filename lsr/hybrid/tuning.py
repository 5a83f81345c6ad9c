"""Fusion weights tuned without peeking at the test set.

* :func:`tune_weights` searches weights on a development set (a dataset's train/dev queries):
  ``search="grid"`` scores every point of the weight simplex (step 0.1 by default),
  ``search="coordinate"`` runs coordinate ascent (one weight at a time over a value grid,
  renormalised to sum 1, until no move improves).
* :func:`cross_validate` is for datasets with only test queries: the queries are split into
  ``folds`` parts (seeded shuffle); each part is ranked with the weights tuned on the other parts,
  so every query's result comes from weights that never saw it. The returned run and its
  score are held-out only.

The normalisation and the candidate union are computed once (:func:`lsr.hybrid.fusion.prepare`);
each weight vector then costs one matrix-vector product, a top-k and a trec_eval call on the
metric's cutoff.

>>> import numpy as np
>>> weight_grid(3, step=0.5).tolist()
[[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from lsr.hybrid.fusion import WEIGHTED, Candidates, arrays_to_run, canonical_fusion, combine, prepare, runs_to_arrays

logger = logging.getLogger(__name__)

WEIGHTABLE = WEIGHTED  # methods whose weights can be tuned

__all__ = ["WEIGHTABLE", "weight_grid", "tune_weights", "cross_validate", "TuneResult", "CrossValidation", "make_folds"]

Run = dict[str, dict[str, float]]


def weight_grid(n_runs: int, step: float = 0.1) -> np.ndarray:
    """All weight vectors on the simplex with coordinates in multiples of ``step`` (sum 1)."""
    if n_runs < 1:
        raise ValueError("need at least one run")
    units = int(round(1 / step))
    if units < 1 or not np.isclose(units * step, 1.0):
        raise ValueError(f"step must divide 1, got {step}")
    points = [c for c in itertools.product(range(units + 1), repeat=n_runs) if sum(c) == units]
    return np.array(points, dtype=np.float64) / units


def _cutoff(metric: str, depth: int) -> int:
    _, _, k = metric.partition("@")
    return int(k) if k else depth


@dataclass
class _Objective:
    """Per-query metric of a weight vector over all queries (memoised)."""

    cands: Candidates
    qids: list[str]
    vocab: np.ndarray
    qrels: Mapping[str, Mapping[str, int]]
    method: str
    metric: str
    k_eval: int
    params: dict[str, Any]
    remove_self: bool = True
    cache: dict[tuple, np.ndarray] = field(default_factory=dict)

    def per_query(self, weights: np.ndarray) -> np.ndarray:
        key = tuple(np.round(weights, 10))
        if key not in self.cache:
            from lsr.eval.metrics import evaluate

            ids, scores = combine(self.cands, self.method, weights, k=self.k_eval, **self.params)
            run = arrays_to_run(self.qids, self.vocab, ids, scores)
            _, table = evaluate(self.qrels, run, [self.metric], remove_self=self.remove_self, per_query=True)
            self.cache[key] = np.array([table[q][self.metric] if q in table else np.nan for q in self.qids])
        return self.cache[key]

    def mean(self, weights: np.ndarray, mask: np.ndarray) -> float:
        v = self.per_query(weights)[mask]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else 0.0


@dataclass
class TuneResult:
    weights: list[float]
    score: float            # mean metric on the queries the weights were tuned on
    evaluated: int          # weight vectors scored


def _search(obj: _Objective, n_runs: int, mask: np.ndarray, search: str, step: float,
            max_rounds: int = 10) -> TuneResult:
    if search == "grid":
        grid = weight_grid(n_runs, step)
        means = np.array([obj.mean(w, mask) for w in grid])
        # ties: prefer the most even weights (closest to uniform), then grid order
        spread = np.abs(grid - 1.0 / n_runs).sum(axis=1)
        best = int(np.lexsort((np.arange(len(grid)), spread, -means))[0])
        return TuneResult(grid[best].round(10).tolist(), float(means[best]), len(grid))
    if search != "coordinate":
        raise ValueError(f"search must be 'grid' or 'coordinate', not {search!r}")
    w = np.full(n_runs, 1.0 / n_runs)
    best = obj.mean(w, mask)
    values = np.arange(0, 1 + 1e-9, step)
    for _ in range(max_rounds):
        moved = False
        for r in range(n_runs):
            for v in values:
                trial = w.copy()
                trial[r] = v
                if trial.sum() <= 0:
                    continue
                trial = trial / trial.sum()
                score = obj.mean(trial, mask)
                if score > best + 1e-12:
                    best, w, moved = score, trial, True
        if not moved:
            break
    return TuneResult(w.round(10).tolist(), best, len(obj.cache))


def _objective(runs: Sequence[Mapping[str, Mapping[str, float]]], qrels, norm, method, metric, depth,
               floor, norm_params, remove_self, params, query_ids=None) -> _Objective:
    method = canonical_fusion(method)
    qids, vocab, ids, scores = runs_to_arrays(runs, query_ids)
    cands = prepare(ids, scores, norm=norm, depth=depth, floor=floor, norm_params=norm_params)
    k_eval = _cutoff(metric, depth or 1000) + (1 if remove_self else 0)
    return _Objective(cands, qids, vocab, qrels, method, metric, k_eval, params, remove_self)


def tune_weights(runs: Sequence[Mapping[str, Mapping[str, float]]], qrels: Mapping[str, Mapping[str, int]],
                 norm: str = "min-max", method: str = "wsum", metric: str = "ndcg@10", search: str = "grid",
                 step: float = 0.1, depth: int | None = None, floor: str = "zero",
                 norm_params: Any = None, remove_self: bool = True, **params: Any) -> TuneResult:
    """Weights maximising the mean ``metric`` of the fused run over the judged queries.

    Use development queries (never the test queries you report on; see :func:`cross_validate`)."""
    obj = _objective(runs, qrels, norm, method, metric, depth, floor, norm_params, remove_self, params)
    return _search(obj, len(runs), np.ones(len(obj.qids), bool), search, step)


def make_folds(query_ids: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Split query ids into ``folds`` near-equal parts after a seeded shuffle (sorted first, so the
    split does not depend on input order)."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    qids = sorted(query_ids)
    if len(qids) < folds:
        raise ValueError(f"{len(qids)} queries cannot make {folds} folds")
    perm = np.random.default_rng(seed).permutation(len(qids))
    return [[qids[i] for i in part] for part in np.array_split(perm, folds)]


@dataclass
class CrossValidation:
    run: Run                          # every query ranked with weights tuned on the other folds
    fold_weights: list[list[float]]   # weights used for fold i
    fold_queries: list[list[str]]
    train_scores: list[float]         # tuning objective on the other folds
    heldout_scores: list[float]       # metric of fold i's queries with fold i's weights
    score: float                      # mean held-out metric over all judged queries


def cross_validate(runs: Sequence[Mapping[str, Mapping[str, float]]], qrels: Mapping[str, Mapping[str, int]],
                   folds: int = 5, norm: str = "min-max", method: str = "wsum", metric: str = "ndcg@10",
                   search: str = "grid", step: float = 0.1, depth: int | None = None, k: int | None = None,
                   floor: str = "zero", norm_params: Any = None, seed: int = 0, remove_self: bool = True,
                   **params: Any) -> CrossValidation:
    """K-fold cross-validated fusion over the queries (ranked with held-out weights only).

    ``k`` cuts the output run (default: ``depth``, else every candidate)."""
    obj = _objective(runs, qrels, norm, method, metric, depth, floor, norm_params, remove_self, params)
    parts = make_folds(obj.qids, folds, seed)
    qpos = {q: i for i, q in enumerate(obj.qids)}
    nq = len(obj.qids)
    out_k = k if k is not None else depth
    full = {}
    fold_w, train_s, held_s = [], [], []
    for part in parts:
        test = np.zeros(nq, bool)
        test[[qpos[q] for q in part]] = True
        res = _search(obj, len(runs), ~test, search, step)
        w = np.array(res.weights)
        ids, scores = combine(obj.cands, obj.method, w, k=out_k, **obj.params)
        sub = arrays_to_run([obj.qids[i] for i in np.flatnonzero(test)], obj.vocab, ids[test], scores[test])
        full.update(sub)
        fold_w.append(res.weights)
        train_s.append(res.score)
        held_s.append(obj.mean(w, test))
        logger.info("fold of %d queries: weights %s, train %s %.4f, held-out %.4f", len(part), res.weights,
                    metric, res.score, held_s[-1])
    run = {q: full[q] for q in obj.qids}
    per_q = np.full(nq, np.nan)
    for part, w in zip(parts, fold_w):
        idx = [qpos[q] for q in part]
        per_q[idx] = obj.per_query(np.array(w))[idx]
    judged = per_q[~np.isnan(per_q)]
    return CrossValidation(run, fold_w, parts, train_s, held_s, float(judged.mean()) if judged.size else 0.0)
