"""Normalisers against plain-Python references, including degenerate candidate lists."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lsr.fusion.normalize import NORMALIZERS, canonical_normalizer, normalize


def _ref(name: str, s: list[float], pool: int, lb: float = 0.0) -> tuple[list[float], float]:
    """Straightforward definitions (EPS = 1e-9 clamps as in ranx)."""
    n = len(s)
    if n == 0:
        return [], 0.0 if name != "borda" else 0.5 - (0 - 1) / (2 * max(pool, 1))
    lo, hi = min(s), max(s)
    if name == "min-max":
        return [(x - lo) / max(hi - lo, 1e-9) for x in s], 0.0
    if name == "max":
        return [x / max(hi, 1e-9) for x in s], 0.0
    if name == "sum":
        return [(x - lo) / max(sum(s) - n * lo, 1e-9) for x in s], 0.0
    if name == "zmuv":
        mean = sum(s) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in s) / n)
        return [(x - mean) / max(std, 1e-9) for x in s], 0.0
    if name == "l2":
        norm = math.sqrt(sum(x * x for x in s))
        return [x / max(norm, 1e-9) for x in s], 0.0
    if name == "tmm":
        return [(x - lb) / max(hi - lb, 1e-9) for x in s], 0.0
    if name == "rank":
        return [1 - i / n for i in range(n)], 0.0
    if name == "borda":
        return [1 - i / pool for i in range(n)], 0.5 - (n - 1) / (2 * pool)
    if name == "none":
        return list(s), 0.0
    raise AssertionError(name)


ROWS = [
    [9.0, 7.5, 3.0, 2.0, 0.5],   # ordinary
    [4.2],                       # one candidate
    [1.0, 1.0, 1.0],             # all equal
    [],                          # empty run for this query
    [0.9, 0.2, -0.3, -0.8],      # cosine-like, negative
    [0.0, 0.0],                  # all zero
]


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_matches_reference_including_degenerate_rows(name: str) -> None:
    K = max(len(r) for r in ROWS)
    scores = np.zeros((len(ROWS), K))
    for i, r in enumerate(ROWS):
        scores[i, :len(r)] = r
    n = np.array([len(r) for r in ROWS])
    pool = np.array([len(r) + 3 for r in ROWS])
    params = {"lower_bound": -1.0} if name == "tmm" else {}
    values, floor = normalize(name, scores, n, n_candidates=pool, **params)
    for i, r in enumerate(ROWS):
        ref, ref_floor = _ref(name, r, int(pool[i]), lb=-1.0)
        assert values[i, :len(r)].tolist() == pytest.approx(ref, abs=1e-12), (name, r)
        assert np.isfinite(values[i, :len(r)]).all()
        assert floor[i] == pytest.approx(ref_floor), (name, r)


def test_degenerate_lists_do_not_divide_by_zero() -> None:
    with np.errstate(all="raise"):
        for name in NORMALIZERS:
            normalize(name, np.array([[2.0, 2.0], [0.0, 0.0]]), np.array([2, 0]), n_candidates=np.array([2, 0]))


def test_aliases_and_errors() -> None:
    assert canonical_normalizer("z-score") == "zmuv"
    assert canonical_normalizer("min_max") == "min-max"
    with pytest.raises(ValueError, match="unknown normaliser"):
        normalize("nope", np.zeros((1, 1)), np.array([1]))
    with pytest.raises(ValueError, match="n must lie"):
        normalize("min-max", np.zeros((1, 2)), np.array([3]))
    with pytest.raises(ValueError, match=r"\(nq, K\)"):
        normalize("min-max", np.zeros(3), np.array([3]))
