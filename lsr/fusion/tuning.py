"""Fusion weights tuned without peeking at the test set.

* :func:`tune_weights` searches weights on a development set (a dataset's train/dev queries):
  ``search="grid"`` scores every point of the weight simplex (step 0.1 by default),
  ``search="coordinate"`` runs coordinate ascent (one weight at a time over a value grid,
  renormalised to sum 1, until no move improves).
* :func:`cross_validate` is for datasets with only test queries: the queries are split into
  ``folds`` parts (seeded shuffle); each part is ranked with the weights tuned on the other parts,
  so every query's result comes from weights that never saw it. The returned run and its
  score are held-out only.
* ``selection`` says which scored weight vector is kept (:func:`select_weights`): ``"best"`` the
  highest mean metric; ``"1se"`` (default) Breiman's one-standard-error rule (CART; glmnet's
  ``lambda.1se``): among the vectors whose mean is within one standard error of the best mean
  (the standard error of the best vector's per-query scores), the one closest to equal weights
  (L1 distance), i.e. the most regularised model the tuning queries cannot tell from the best.
  With ``search="coordinate"`` the candidates are the vectors the ascent scored.

The normalisation and the candidate union are computed once (:func:`lsr.fusion.combine.prepare`);
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

from lsr.fusion.combine import WEIGHTED, Candidates, arrays_to_run, canonical_fusion, combine, fuse, prepare, runs_to_arrays

logger = logging.getLogger(__name__)

WEIGHTABLE = WEIGHTED  # methods whose weights can be tuned

SELECTIONS = ("1se", "best")  # which scored weight vector tuning keeps (see select_weights)

__all__ = ["WEIGHTABLE", "SELECTIONS", "weight_grid", "select_weights", "tune_weights", "cross_validate",
           "TuneResult", "CrossValidation", "make_folds"]

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
            from lsr.metrics import evaluate

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
    score: float            # mean metric of ``weights`` on the queries they were tuned on
    evaluated: int          # weight vectors scored
    selection: str = "best"
    best_weights: list[float] | None = None   # the highest-scoring vector (= weights for "best")
    best_score: float | None = None
    se: float | None = None                   # 1se: standard error of the best vector's mean
    candidates: int | None = None             # 1se: vectors within one SE of the best


def select_weights(points: np.ndarray, scores: np.ndarray, selection: str = "1se",
                   best: int | None = None) -> dict[str, Any]:
    """Pick one of the scored weight vectors.

    ``points`` (m, n_runs) are weight vectors, ``scores`` (m, n_queries) their per-query metric
    (NaN: query not judged, left out). The mean of a row is its score (0 without a judged query).
    ``"best"``: the highest mean; ties go to the vector closest to equal weights (L1 distance to
    ``1/n_runs``), then to the first row. ``"1se"``: ``se`` = sample standard deviation of the best
    row's per-query scores / sqrt(their number) (0 with fewer than two); the candidates are the
    rows with mean >= best mean - se; the pick is the candidate closest to equal weights, ties to
    the higher mean, then the first row. ``best`` overrides which row counts as the best (a search
    that already settled on one, e.g. coordinate ascent's end point). Returns
    ``{"index", "best", "se", "candidates"}``.

    >>> pts = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> select_weights(pts, np.array([[0.9, 0.5], [0.8, 0.5]]), "1se")["index"]
    1
    >>> select_weights(pts, np.array([[0.9, 0.5], [0.8, 0.5]]), "best")["index"]
    0
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    points = np.asarray(points, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if points.ndim != 2 or scores.ndim != 2 or len(points) != len(scores) or not len(points):
        raise ValueError(f"need (m, n_runs) points and (m, n_queries) scores, got {points.shape} and {scores.shape}")
    judged = ~np.isnan(scores)
    count = judged.sum(axis=1)
    means = np.where(count > 0, np.where(judged, scores, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)
    spread = np.abs(points - 1.0 / points.shape[1]).sum(axis=1)
    order = np.arange(len(points))
    if best is None:
        best = int(np.lexsort((order, spread, -means))[0])
    if selection == "best":
        return {"index": best, "best": best, "se": None, "candidates": None}
    x = scores[best][judged[best]]
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0
    inside = means >= means[best] - se
    cand = np.flatnonzero(inside)
    pick = int(cand[np.lexsort((order[cand], -means[cand], spread[cand]))[0]])
    return {"index": pick, "best": best, "se": se, "candidates": int(inside.sum())}


def _result(points: np.ndarray, scores: np.ndarray, selection: str, best: int | None = None) -> TuneResult:
    sel = select_weights(points, scores, selection, best)
    judged = ~np.isnan(scores)

    def mean(i: int) -> float:
        return float(scores[i][judged[i]].mean()) if judged[i].any() else 0.0

    i, b = sel["index"], sel["best"]
    return TuneResult(points[i].round(10).tolist(), mean(i), len(points), selection,
                      points[b].round(10).tolist(), mean(b), sel["se"], sel["candidates"])


def _search(obj: _Objective, n_runs: int, mask: np.ndarray, search: str, step: float,
            selection: str = "1se", max_rounds: int = 10) -> TuneResult:
    """Score weight vectors on the queries of ``mask`` only, then :func:`select_weights`."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    if search == "grid":
        grid = weight_grid(n_runs, step)
        return _result(grid, np.array([obj.per_query(w)[mask] for w in grid]), selection)
    if search != "coordinate":
        raise ValueError(f"search must be 'grid' or 'coordinate', not {search!r}")
    seen: dict[tuple, np.ndarray] = {}   # every vector the ascent scored (the 1se candidates)

    def score(w: np.ndarray) -> float:
        seen.setdefault(tuple(np.round(w, 10)), w)
        return obj.mean(w, mask)

    w = np.full(n_runs, 1.0 / n_runs)
    best = score(w)
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
                s = score(trial)
                if s > best + 1e-12:
                    best, w, moved = s, trial, True
        if not moved:
            break
    keys = list(seen)
    points = np.array([seen[k] for k in keys])
    end = keys.index(tuple(np.round(w, 10)))   # the ascent's end point is its best
    return _result(points, np.array([obj.per_query(p)[mask] for p in points]), selection, best=end)


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
                 norm_params: Any = None, remove_self: bool = True, selection: str = "1se",
                 **params: Any) -> TuneResult:
    """Weights tuned on the mean ``metric`` of the fused run over the judged queries.

    ``selection="best"`` keeps the highest mean; ``"1se"`` (default) the most even weights within
    one standard error of it (:func:`select_weights`). Use development queries (never the test
    queries you report on; see :func:`cross_validate`)."""
    obj = _objective(runs, qrels, norm, method, metric, depth, floor, norm_params, remove_self, params)
    return _search(obj, len(runs), np.ones(len(obj.qids), bool), search, step, selection)


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
    selection: str = "best"
    fold_tuning: list[TuneResult] = field(default_factory=list)   # fold i's tuning (best vector, SE, ...)


def cross_validate(runs: Sequence[Mapping[str, Mapping[str, float]]], qrels: Mapping[str, Mapping[str, int]],
                   folds: int = 5, norm: str = "min-max", method: str = "wsum", metric: str = "ndcg@10",
                   search: str = "grid", step: float = 0.1, depth: int | None = None, k: int | None = None,
                   floor: str = "zero", norm_params: Any = None, seed: int = 0, remove_self: bool = True,
                   selection: str = "1se", **params: Any) -> CrossValidation:
    """K-fold cross-validated fusion over the queries (ranked with held-out weights only).

    Each fold's weights are searched and selected (``selection``, see :func:`select_weights`) on
    the other folds' queries alone: the held-out fold's judgements never enter its tuning.
    ``k`` cuts the output run (default: ``depth``, else every candidate)."""
    obj = _objective(runs, qrels, norm, method, metric, depth, floor, norm_params, remove_self, params)
    parts = make_folds(obj.qids, folds, seed)
    qpos = {q: i for i, q in enumerate(obj.qids)}
    nq = len(obj.qids)
    out_k = k if k is not None else depth
    full = {}
    fold_w, train_s, held_s, tunings = [], [], [], []
    for part in parts:
        test = np.zeros(nq, bool)
        test[[qpos[q] for q in part]] = True
        res = _search(obj, len(runs), ~test, search, step, selection)
        tunings.append(res)
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
    return CrossValidation(run, fold_w, parts, train_s, held_s, float(judged.mean()) if judged.size else 0.0,
                           selection, tunings)


def fuse_runs(runs: Sequence[Mapping[str, Mapping[str, float]]], norm: str = "min-max", method: str = "wsum",
              weights: Sequence[float] | None = None, depth: int = 1000, k: int = 1000, floor: str = "zero",
              lower_bounds: Sequence[float] | None = None, rrf_k: float = 60,
              qrels: Mapping[str, Mapping[str, int]] | None = None, folds: int = 5, metric: str = "ndcg@10",
              search: str = "grid", step: float = 0.1, selection: str = "1se",
              seed: int = 0) -> tuple[dict[str, dict[str, float]], list[str], dict[str, Any] | None]:
    """Fuse runs with given weights, or with weights tuned on ``qrels`` (what ``lsr fuse`` does).

    With ``qrels`` and ``folds >= 2`` the fused run is cross-validated (each fold's queries fused
    with weights tuned on the other folds); ``folds`` 0 or 1 tunes on every query (only right for
    dev qrels). Returns ``(fused run, report lines, tuning report or None)``.
    """
    params: dict[str, Any] = {"rrf_k": rrf_k} if method in ("rrf", "wrrf") else {}
    norm_params = None if lower_bounds is None else [{"lower_bound": b} for b in lower_bounds]
    common = dict(norm=norm, method=method, depth=depth, floor=floor, norm_params=norm_params, **params)
    if qrels is None:
        return fuse(runs, weights=weights, k=k, **common), [], None
    if method not in WEIGHTABLE:
        raise ValueError(f"{method!r} has no weights to tune")
    kw = dict(metric=metric, search=search, step=step, selection=selection, **common)
    notes: list[str] = []
    if folds >= 2:
        cv = cross_validate(runs, qrels, folds=folds, k=k, seed=seed, **kw)
        for i, (w, h, t) in enumerate(zip(cv.fold_weights, cv.heldout_scores, cv.fold_tuning)):
            extra = "" if selection == "best" else f"  (best {t.best_weights}, {t.candidates} within 1 SE)"
            notes.append(f"fold {i + 1}: weights {w}  held-out {metric} {h:.4f}{extra}")
        notes.append(f"{folds}-fold cross-validated {metric}: {cv.score:.4f}")
        report = {"folds": folds, "seed": seed, "fold_weights": cv.fold_weights,
                  "fold_queries": cv.fold_queries, "train_scores": cv.train_scores,
                  "heldout_scores": cv.heldout_scores, "cv_score": cv.score,
                  "fold_best_weights": [t.best_weights for t in cv.fold_tuning],
                  "fold_best_train_scores": [t.best_score for t in cv.fold_tuning],
                  "fold_se": [t.se for t in cv.fold_tuning]}
        return cv.run, notes, report
    res = tune_weights(runs, qrels, **kw)
    notes.append(f"tuned weights {res.weights}: {metric} {res.score:.4f} on the tuning queries")
    report = {"weights": res.weights, "score": res.score, "best_weights": res.best_weights,
              "best_score": res.best_score, "se": res.se}
    return fuse(runs, weights=res.weights, k=k, **common), notes, report
