"""Weight selection in tuning (best, Breiman's one-standard-error rule) against brute-force
references, and cross-validation that never lets a held-out fold's judgements choose its weights."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import pytrec_eval
from click.testing import CliRunner

from lsr.cli import main
from lsr.io.runs import write_run
from lsr.fusion.tuning import cross_validate, select_weights, tune_weights, weight_grid


# ------------------------------------------------------------------ brute-force references
def _brute_select(points: np.ndarray, scores: np.ndarray, selection: str) -> tuple[int, int | None]:
    """The rule written out with Python loops and ``statistics``: (chosen row, candidates)."""
    n_runs = points.shape[1]
    rows = []
    for i in range(len(points)):
        vals = [float(v) for v in scores[i] if not math.isnan(v)]
        mean = sum(vals) / len(vals) if vals else 0.0
        spread = sum(abs(float(w) - 1.0 / n_runs) for w in points[i])
        rows.append((i, mean, spread, vals))
    best = min(rows, key=lambda r: (-r[1], r[2], r[0]))
    if selection == "best":
        return best[0], None
    vals = best[3]
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    cands = [r for r in rows if r[1] >= best[1] - se]
    return min(cands, key=lambda r: (r[2], -r[1], r[0]))[0], len(cands)


def _fuse_min_max_wsum(runs: list[dict], weights) -> dict:
    """Min-max per run and query (a missing document counts 0), weighted sum: plain dicts."""
    fused: dict[str, dict[str, float]] = {}
    for q in runs[0]:
        acc: dict[str, float] = {}
        for run, w in zip(runs, weights):
            docs = run.get(q, {})
            if not docs:
                continue
            lo, hi = min(docs.values()), max(docs.values())
            for d, s in docs.items():
                acc[d] = acc.get(d, 0.0) + w * (s - lo) / max(hi - lo, 1e-9)
        fused[q] = acc
    return fused


def _synthetic_runs(seed: int, n_queries: int = 40, n_docs: int = 30, n_runs: int = 3):
    """Random runs whose first run is informative, plus graded qrels; two queries are unjudged."""
    rng = np.random.default_rng(seed)
    docs = [f"d{i:02d}" for i in range(n_docs)]
    qrels, runs = {}, [dict() for _ in range(n_runs)]
    for j in range(n_queries):
        q = f"q{j:02d}"
        rel = rng.choice(n_docs, size=3, replace=False)
        if j >= 2:
            qrels[q] = {docs[int(r)]: int(g) for r, g in zip(rel, rng.integers(1, 3, size=3))}
        for r in range(n_runs):
            picked = rng.choice(n_docs, size=15, replace=False)
            scores = rng.normal(size=15) + (1.5 - 0.5 * r) * np.isin(picked, rel)
            runs[r][q] = {docs[int(p)]: float(s) for p, s in zip(picked, scores)}
    return runs, qrels


# ------------------------------------------------------------------ select_weights
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("selection", ["best", "1se"])
def test_select_weights_matches_brute_force(seed, selection):
    rng = np.random.default_rng(seed)
    points = weight_grid(3, 0.25) if seed % 2 else weight_grid(2, 0.1)
    # dyadic per-query scores: means are exact, so ties are real ties in both implementations.
    # Even seeds: independent scores; odd: a shared query effect (as real per-query metrics have),
    # small weight effects and noise, so that many vectors fall within one SE of the best
    shape = (len(points), 12 + seed)
    if seed % 2:
        scores = (rng.integers(0, 5, size=shape[1]) + rng.integers(0, 3, size=(shape[0], 1))
                  + rng.integers(0, 2, size=shape)) / 8.0
    else:
        scores = rng.integers(0, 9, size=shape) / 8.0
    scores[rng.integers(len(points))] = scores[rng.integers(len(points))]   # a duplicate row: a tie
    scores[:, :2] = np.nan if seed % 3 == 0 else scores[:, :2]              # unjudged queries
    got = select_weights(points, scores, selection)
    index, candidates = _brute_select(points, scores, selection)
    assert got["index"] == index and got["candidates"] == candidates


def test_select_weights_hand_computed():
    points = np.array([[1.0, 0.0], [0.7, 0.3], [0.5, 0.5]])
    scores = np.array([[1.0, 0.5, 0.5, 0.0],     # mean 0.5, sd sqrt(1/6), se sqrt(1/6)/2 ~ 0.204
                       [0.5, 0.5, 0.5, 0.0],     # mean 0.375 >= 0.296: a candidate
                       [0.25, 0.0, 0.25, 0.0]])  # mean 0.125: not
    assert select_weights(points, scores, "best")["index"] == 0
    sel = select_weights(points, scores, "1se")
    assert sel["index"] == 1 and sel["candidates"] == 2 and sel["se"] == pytest.approx(math.sqrt(1 / 6) / 2)
    one_query = select_weights(points, scores[:, :1], "1se")   # no SE from one query: the best itself
    assert one_query["index"] == 0 and one_query["se"] == 0.0
    with pytest.raises(ValueError, match="selection"):
        select_weights(points, scores, "2se")
    with pytest.raises(ValueError, match="points"):
        select_weights(points, scores[:2], "best")


# ------------------------------------------------------------------ tune_weights end to end
@pytest.mark.parametrize("selection", ["best", "1se"])
def test_tune_weights_matches_pytrec_eval_brute_force(selection):
    runs, qrels = _synthetic_runs(0)
    grid = weight_grid(3, 0.25)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    qids = sorted(runs[0])
    scores = np.full((len(grid), len(qids)), np.nan)
    for i, w in enumerate(grid):
        res = ev.evaluate(_fuse_min_max_wsum(runs, w))
        for j, q in enumerate(qids):
            if q in res:
                scores[i, j] = res[q]["ndcg_cut_10"]
    index, _ = _brute_select(grid, scores, selection)
    got = tune_weights(runs, qrels, norm="min-max", method="wsum", step=0.25, selection=selection)
    assert got.weights == pytest.approx(grid[index].tolist())
    assert got.score == pytest.approx(np.nanmean(scores[index]))
    assert got.selection == selection and got.evaluated == len(grid)


def test_1se_keeps_weights_within_one_se_and_no_less_even_than_best():
    runs, qrels = _synthetic_runs(1)
    for search in ("grid", "coordinate"):
        best = tune_weights(runs, qrels, step=0.25, search=search, selection="best")
        one = tune_weights(runs, qrels, step=0.25, search=search, selection="1se")
        assert one.best_weights == best.weights and one.best_score == pytest.approx(best.score)
        assert one.score >= best.score - one.se - 1e-12 and one.se > 0

        def spread(w):
            return np.abs(np.array(w) - 1 / 3).sum()

        assert spread(one.weights) <= spread(best.weights) + 1e-12


def _mean_ndcg(runs, qrels, w) -> float:
    res = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(_fuse_min_max_wsum(runs, w))
    return float(np.mean([v["ndcg_cut_10"] for v in res.values()]))


def test_coordinate_best_is_the_ascent_end_point():
    runs, qrels = _synthetic_runs(2)
    res = tune_weights(runs, qrels, step=0.25, search="coordinate", selection="best")
    assert res.weights == res.best_weights and res.se is None
    end = np.array(res.weights)
    assert res.score == pytest.approx(_mean_ndcg(runs, qrels, end))
    for r in range(3):   # no single-coordinate move on the value grid improves the end point
        for v in np.arange(0, 1.01, 0.25):
            trial = end.copy()
            trial[r] = v
            if trial.sum() > 0:
                assert _mean_ndcg(runs, qrels, trial / trial.sum()) <= res.score + 1e-9


# ------------------------------------------------------------------ cross-validation
@pytest.mark.parametrize("selection", ["best", "1se"])
def test_cv_fold_weights_ignore_the_held_out_qrels(selection):
    runs, qrels = _synthetic_runs(3)
    ref = cross_validate(runs, qrels, folds=4, step=0.25, selection=selection)
    rng = np.random.default_rng(0)
    for i, part in enumerate(ref.fold_queries):
        perturbed = {q: dict(r) for q, r in qrels.items()}
        for q in part:   # held-out judgements scrambled: other documents, other grades, some dropped
            if q in perturbed:
                perturbed[q] = {f"d{int(d):02d}": int(g) for d, g in
                                zip(rng.choice(30, size=4, replace=False), rng.integers(1, 3, size=4))}
        cv = cross_validate(runs, perturbed, folds=4, step=0.25, selection=selection)
        assert cv.fold_queries == ref.fold_queries
        assert cv.fold_weights[i] == ref.fold_weights[i]
        t, r = cv.fold_tuning[i], ref.fold_tuning[i]
        assert (t.best_weights, t.score, t.best_score, t.se) == (r.best_weights, r.score, r.best_score, r.se)
        # and they are what tuning on the other folds' queries alone gives
        train = {q: v for q, v in qrels.items() if q not in part}
        trunc = [{q: d for q, d in run.items() if q not in part} for run in runs]
        assert tune_weights(trunc, train, step=0.25, selection=selection).weights == ref.fold_weights[i]


def test_cv_records_selection_and_default_is_1se():
    runs, qrels = _synthetic_runs(4)
    cv = cross_validate(runs, qrels, folds=3, step=0.25)
    assert cv.selection == "1se" and len(cv.fold_tuning) == 3
    assert all(t.selection == "1se" and t.candidates >= 1 for t in cv.fold_tuning)
    with pytest.raises(ValueError, match="selection"):
        cross_validate(runs, qrels, folds=3, step=0.25, selection="min")


def test_cli_fuse_selection_option(tmp_path):
    runs, qrels = _synthetic_runs(5)
    paths = []
    for i, run in enumerate(runs):
        write_run(run, tmp_path / f"r{i}.trec")
        paths.append(str(tmp_path / f"r{i}.trec"))
    with open(tmp_path / "qrels.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{g}\n" for q, rel in qrels.items() for d, g in rel.items())
    for selection in ("best", "1se"):
        js = tmp_path / f"{selection}.json"
        res = CliRunner().invoke(main, ["fuse", *paths, "--tune", "--qrels", str(tmp_path / "qrels.tsv"), "--folds", "3",
                                        "--step", "0.25", "--selection", selection, "--tuning-json", str(js),
                                        "-o", str(tmp_path / "cv.trec")])
        assert res.exit_code == 0, res.output
        report = json.loads(js.read_text())
        cv = cross_validate(runs, qrels, folds=3, step=0.25, depth=1000, k=1000, selection=selection)
        assert report["selection"] == selection and report["fold_weights"] == cv.fold_weights
        assert report["fold_best_weights"] == [t.best_weights for t in cv.fold_tuning]
    bad = CliRunner().invoke(main, ["fuse", *paths, "--tune", "--qrels", str(tmp_path / "qrels.tsv"), "--selection", "x"])
    assert bad.exit_code != 0 and "--selection" in bad.output
