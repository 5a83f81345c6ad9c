"""Fusion: brute-force references for lsr-only methods (weighted RRF, floors, depth, l2/tmm),
deterministic ties, the array API and input errors."""
from __future__ import annotations

import numpy as np
import pytest

from lsr.fusion.combine import FUSIONS, fuse, fuse_arrays, register_fusion
from lsr.fusion.normalize import normalize


def _ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def _brute(runs, norm, weights, floor="zero", depth=None, rrf_k=None, lb=None):
    """Dict-by-dict reference: normalise each cut run, give missing docs the floor, weighted sum
    (or weighted RRF when rrf_k is set)."""
    out = {}
    for q in {q for r in runs for q in r}:
        normed = []
        for i, r in enumerate(runs):
            items = _ranked(r.get(q, {}))[:depth]
            if rrf_k is not None:
                normed.append(({d: 1 / (rrf_k + j + 1) for j, (d, _) in enumerate(items)}, 0.0))
                continue
            s = np.array([[x for _, x in items]]) if items else np.zeros((1, 1))
            v, fl = normalize(norm, s, np.array([len(items)]), **({"lower_bound": lb[i]} if lb else {}))
            vals = {d: float(v[0, j]) for j, (d, _) in enumerate(items)}
            f = float(fl[0]) if floor == "zero" or not items else min(vals.values())
            normed.append((vals, f))
        docs = {d for vals, _ in normed for d in vals}
        out[q] = {d: sum(w * vals.get(d, f) for w, (vals, f) in zip(weights, normed)) for d in docs}
    return out


def _random_runs(seed=0, n_runs=3, n_q=5, pool=30):
    rng = np.random.default_rng(seed)
    runs = []
    for r in range(n_runs):
        run = {}
        for q in range(n_q):
            docs = rng.choice(pool, size=int(rng.integers(1, 20)), replace=False)
            run[f"q{q}"] = {f"d{d:02d}": float(rng.normal(r, 1)) for d in docs}
        runs.append(run)
    return runs


def _same(ours, ref):
    assert set(ours) == set(ref)
    for q in ref:
        assert ours[q] == pytest.approx(ref[q], abs=1e-9)
        assert list(ours[q]) == [d for d, _ in _ranked(ours[q])]  # best first, ties by id desc


@pytest.mark.parametrize("norm", ["min-max", "zmuv", "l2", "rank", "sum", "max"])
@pytest.mark.parametrize("floor", ["zero", "min"])
def test_wsum_matches_brute_force(norm, floor):
    runs, w = _random_runs(), [0.5, 0.2, 0.3]
    _same(fuse(runs, norm=norm, method="wsum", weights=w, floor=floor), _brute(runs, norm, w, floor))


def test_depth_cuts_each_run_before_normalising():
    runs, w = _random_runs(seed=3), [1.0, 1.0, 1.0]
    _same(fuse(runs, norm="min-max", method="wsum", weights=w, depth=5), _brute(runs, "min-max", w, depth=5))


def test_theoretical_min_max_with_per_run_bounds():
    runs, w, lb = _random_runs(seed=4), [0.4, 0.4, 0.2], [-5.0, -5.0, -3.0]
    ours = fuse(runs, norm="tmm", method="wsum", weights=w, norm_params=[{"lower_bound": b} for b in lb])
    _same(ours, _brute(runs, "tmm", w, lb=lb))


def test_weighted_rrf_matches_brute_force():
    runs, w = _random_runs(seed=5), [2.0, 1.0, 0.5]
    _same(fuse(runs, method="wrrf", weights=w, rrf_k=10), _brute(runs, None, w, rrf_k=10))
    _same(fuse(runs, method="rrf"), _brute(runs, None, [1, 1, 1], rrf_k=60))


def test_ties_are_deterministic_and_trec_ordered():
    runs = [{"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, {"q": {"c": 2.0, "b": 2.0, "a": 2.0}}]
    for method in FUSIONS:
        out = fuse(runs, norm="min-max", method=method)
        assert list(out["q"]) == [d for d, _ in _ranked(out["q"])]
        assert out == fuse(runs[::-1], norm="min-max", method=method) or method in ("rrf", "wrrf")
    # rank methods rank tied inputs by id descending, as trec_eval would
    assert list(fuse(runs, method="rrf")["q"]) == ["c", "b", "a"]


def test_k_cuts_output_and_queries_union():
    runs = [{"q1": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q2": {"x": 1.0}}]
    out = fuse(runs, norm="min-max", method="sum", k=2)
    assert list(out) == ["q1", "q2"]
    assert list(out["q1"]) == ["a", "b"] and out["q2"] == {"x": 0.0}


def test_array_api_with_padding_matches_dict_api():
    runs = _random_runs(seed=6)
    ref = fuse(runs, norm="zmuv", method="mnz", k=7)
    from lsr.fusion.combine import arrays_to_run, runs_to_arrays

    qids, vocab, ids, scores = runs_to_arrays(runs)
    # shuffle row order and add extra padding: the kernel re-sorts and ignores -1
    rng = np.random.default_rng(0)
    ids2, scores2 = [], []
    for i, s in zip(ids, scores):
        perm = rng.permutation(i.shape[1])
        ids2.append(np.pad(i[:, perm], ((0, 0), (0, 3)), constant_values=-1))
        scores2.append(np.pad(s[:, perm], ((0, 0), (0, 3))))
    out_ids, out_scores = fuse_arrays(ids2, scores2, norm="zmuv", method="mnz", k=7)
    assert out_ids.shape == (len(qids), 7)
    got = arrays_to_run(qids, vocab, out_ids, out_scores)
    assert {q: list(d) for q, d in got.items()} == {q: list(d) for q, d in ref.items()}
    for q in ref:
        assert got[q] == pytest.approx(ref[q], abs=1e-12)


def test_empty_inputs():
    assert fuse([{"q": {}}, {"q": {}}]) == {"q": {}}
    ids, scores = fuse_arrays([np.zeros((0, 3), np.int64)] * 2, [np.zeros((0, 3))] * 2, k=5)
    assert ids.shape == (0, 5)


def test_errors_name_the_problem():
    runs = _random_runs()
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(runs, method="nope")
    with pytest.raises(ValueError, match="takes no weights"):
        fuse(runs, method="mnz", weights=[1, 2, 3])
    with pytest.raises(ValueError, match="need 3 finite weights"):
        fuse(runs, method="wsum", weights=[1, 2])
    with pytest.raises(ValueError, match="floor"):
        fuse(runs, floor="mean")
    with pytest.raises(ValueError, match="finite"):
        fuse_arrays([np.array([[0]])], [np.array([[np.nan]])])
    with pytest.raises(TypeError, match="integers"):
        fuse_arrays([np.array([[0.5]])], [np.array([[1.0]])])


def test_register_a_new_method_is_one_function():
    register_fusion("first_run", lambda c, w=None: c.values[:, 0])
    out = fuse([{"q": {"a": 1.0, "b": 2.0}}, {"q": {"c": 5.0}}], method="first_run")
    assert list(out["q"])[0] == "b"
    FUSIONS.pop("first_run")
