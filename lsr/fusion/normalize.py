"""Per-query score normalisers: one function per method, one registry of names.

A normaliser sees one run as padded arrays, one row per query, each row sorted best first:

* ``scores``: ``float64`` array ``(nq, K)``; entries past ``n[i]`` are padding (ignored);
* ``n``: ``int64`` array ``(nq,)``, the number of candidates of each query;
* ``n_candidates``: ``int64`` array ``(nq,)``, the size of the union of all fused runs'
  candidates for the query (only Borda uses it).

and returns ``(normalised, floor)``: the normalised scores (same shape; padding left as is) and,
per query, the score a document *missing* from this run receives when runs are fused
(see :mod:`lsr.fusion.combine`). Every method is safe on an empty query, one candidate and
all-equal scores (denominators are clamped at ``1e-9`` exactly as ranx does, so those cases
map to 0 instead of dividing by zero).

==================  ===========================================  ========================
name                normalised score of candidate i (0-based)    floor (missing document)
==================  ===========================================  ========================
``min-max``         (s - min) / max(max - min, 1e-9)             0
``max``             s / max(max, 1e-9)                           0
``sum``             (s - min) / max(sum - n*min, 1e-9)           0
``zmuv``            (s - mean) / max(std, 1e-9) (population std) 0 (the query's mean)
``l2``              s / max(sqrt(sum s^2), 1e-9)                 0
``tmm``             (s - lb) / max(max - lb, 1e-9), lb a known    0 (= the lower bound)
                    lower bound (0 sparse, -1 cosine)
``rank``            1 - i / n                                    0
``borda``           1 - i / C (C = n_candidates)                 0.5 - (n - 1) / (2C)
``none``            s                                            0
==================  ===========================================  ========================

``min-max``, ``max``, ``sum``, ``zmuv``, ``rank`` and ``borda`` are exactly ranx's
normalisations (ranx gives every missing document 0 in the normalised space, Borda its
"unranked" points); ``l2``, ``tmm`` and ``none`` are lsr's. :func:`lsr.fusion.combine.fuse`'s
``floor="min"`` replaces the 0 floor by the run's lowest normalised score for the query.

>>> import numpy as np
>>> s = np.array([[3.0, 2.0, 1.0], [5.0, 0.0, 0.0]]); n = np.array([3, 1])
>>> normalize("min-max", s, n)[0][0].tolist(), float(normalize("min-max", s, n)[0][1, 0])
([1.0, 0.5, 0.0], 0.0)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["NORMALIZERS", "normalize", "EPS", "register_normalizer"]

EPS = 1e-9  # ranx's clamp for every denominator

Normalizer = Callable[..., tuple[np.ndarray, np.ndarray]]


def _valid(scores: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.arange(scores.shape[1])[None, :] < n[:, None]


def _row_min(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.where(valid, scores, np.inf).min(axis=1, initial=np.inf)
    return np.where(np.isfinite(out), out, 0.0)


def _row_max(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(out), out, 0.0)


def _zeros(n: np.ndarray) -> np.ndarray:
    return np.zeros(n.shape[0], dtype=np.float64)


def min_max(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """(s - min) / (max - min): the best candidate gets 1, the worst 0."""
    valid = _valid(scores, n)
    lo, hi = _row_min(scores, valid), _row_max(scores, valid)
    return (scores - lo[:, None]) / np.maximum(hi - lo, EPS)[:, None], _zeros(n)


def max_norm(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """s / max (meant for non-negative scores; ranx's ``max``)."""
    hi = _row_max(scores, _valid(scores, n))
    return scores / np.maximum(hi, EPS)[:, None], _zeros(n)


def sum_norm(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """(s - min) / sum(s - min): shifted scores summing to 1 (ranx's ``sum``)."""
    valid = _valid(scores, n)
    lo = _row_min(scores, valid)
    total = np.where(valid, scores, 0.0).sum(axis=1)
    return (scores - lo[:, None]) / np.maximum(total - lo * n, EPS)[:, None], _zeros(n)


def zmuv(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """z-score: zero mean, unit (population) variance per query."""
    valid = _valid(scores, n)
    cnt = np.maximum(n, 1).astype(np.float64)
    mean = np.where(valid, scores, 0.0).sum(axis=1) / cnt
    var = np.where(valid, (scores - mean[:, None]) ** 2, 0.0).sum(axis=1) / cnt
    return (scores - mean[:, None]) / np.maximum(np.sqrt(var), EPS)[:, None], _zeros(n)


def l2(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """s / ||s||_2: the candidate list as a unit vector."""
    norm = np.sqrt(np.where(_valid(scores, n), scores * scores, 0.0).sum(axis=1))
    return scores / np.maximum(norm, EPS)[:, None], _zeros(n)


def theoretical_min_max(scores: np.ndarray, n: np.ndarray, lower_bound: float = 0.0,
                        **_: object) -> tuple[np.ndarray, np.ndarray]:
    """(s - lb) / (max - lb) with a known lower bound ``lb`` (0: sparse dot products, -1: cosine).

    Unlike min-max, the worst retrieved candidate keeps a score above 0 when it is above the
    bound, so a weak top-1000 is not stretched to [0, 1]."""
    hi = _row_max(scores, _valid(scores, n))
    return (scores - lower_bound) / np.maximum(hi - lower_bound, EPS)[:, None], _zeros(n)


def rank(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """1 - i/n for the candidate at 0-based position i (ranx's ``rank``)."""
    pos = np.arange(scores.shape[1], dtype=np.float64)[None, :]
    return 1.0 - pos / np.maximum(n, 1)[:, None], _zeros(n)


def borda(scores: np.ndarray, n: np.ndarray, n_candidates: np.ndarray | None = None,
          **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Borda points scaled by the candidate pool: 1 - i/C; a missing document gets the mean of
    the positions left, 0.5 - (n-1)/(2C) (ranx's ``borda``)."""
    c = np.maximum(n if n_candidates is None else n_candidates, 1).astype(np.float64)
    pos = np.arange(scores.shape[1], dtype=np.float64)[None, :]
    return 1.0 - pos / c[:, None], 0.5 - (n - 1) / (2.0 * c)


def identity(scores: np.ndarray, n: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores (fusing raw scores is only sensible when they share a scale)."""
    return scores.copy(), _zeros(n)


NORMALIZERS: dict[str, Normalizer] = {
    "min-max": min_max,
    "max": max_norm,
    "sum": sum_norm,
    "zmuv": zmuv,
    "l2": l2,
    "tmm": theoretical_min_max,
    "rank": rank,
    "borda": borda,
    "none": identity,
}
ALIASES = {"min_max": "min-max", "minmax": "min-max", "z-score": "zmuv", "zscore": "zmuv",
           "theoretical-min-max": "tmm", "theoretical_min_max": "tmm"}


def canonical_normalizer(name: str) -> str:
    """The registry name for ``name`` or an alias (``z-score`` -> ``zmuv``); ValueError if unknown."""
    key = ALIASES.get(name, name)
    if key not in NORMALIZERS:
        raise ValueError(f"unknown normaliser {name!r}; choose from {', '.join(sorted(NORMALIZERS))}")
    return key


def register_normalizer(name: str, fn: Normalizer) -> None:
    """Add a normaliser: ``fn(scores, n, n_candidates=None, **params) -> (normalised, floor)``."""
    NORMALIZERS[name] = fn


def normalize(name: str, scores: np.ndarray, n: np.ndarray, n_candidates: np.ndarray | None = None,
              **params: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalise padded per-query scores with the method registered as ``name``.

    Args:
        name: registry name (see the module table) or an alias such as ``z-score``.
        scores: ``(nq, K)`` scores, each row sorted best first; entries past ``n[i]`` ignored.
        n: ``(nq,)`` number of candidates per row.
        n_candidates: ``(nq,)`` candidate-pool size per query (Borda); defaults to ``n``.
        params: method parameters (``lower_bound`` for ``tmm``).

    Returns:
        ``(normalised, floor)``: ``(nq, K)`` float64 scores and the ``(nq,)`` missing-document score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = np.asarray(n, dtype=np.int64)
    if scores.ndim != 2 or n.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (nq, K) and n (nq,), got {scores.shape} and {n.shape}")
    if n.size and (n.min() < 0 or n.max() > scores.shape[1]):
        raise ValueError("n must lie in [0, K]")
    fn = NORMALIZERS[canonical_normalizer(name)]
    if n_candidates is not None:
        params = {**params, "n_candidates": np.asarray(n_candidates, dtype=np.int64)}
    values, floor = fn(scores, n, **params)
    return values, floor
