"""Retrieval metrics with trec_eval semantics (computed by pytrec_eval).

Names follow the common style: ``ndcg@10``, ``recall@100``, ``mrr@10``, ``map``,
``map@100``, ``precision@10``, ``ndcg``. Averages are over every judged query
(``trec_eval -c``): a judged query missing from the run scores 0.

>>> qrels = {"q1": {"d1": 1}}
>>> evaluate(qrels, {"q1": {"d1": 2.0, "d2": 1.0}}, ["ndcg@10", "mrr@10"])
{'ndcg@10': 1.0, 'mrr@10': 1.0}
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

Run = dict[str, dict[str, float]]


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Documents in trec_eval's order: score descending, then document id descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


__all__ = ["Run", "ranked", "DEFAULT_METRICS", "evaluate", "evaluate_per_query", "remove_self_hits"]

DEFAULT_METRICS = ("ndcg@10", "recall@100", "recall@1000", "mrr@10", "map")

# our name -> (pytrec_eval measure family, key prefix)
_FAMILIES = {
    "ndcg": ("ndcg_cut", "ndcg_cut_"),
    "recall": ("recall", "recall_"),
    "precision": ("P", "P_"),
    "p": ("P", "P_"),
    "map": ("map_cut", "map_cut_"),
}
_NAME = re.compile(r"^(?P<fam>[a-z]+)(?:@(?P<k>\d+))?$")


def _parse(metric: str) -> tuple[str, int | None]:
    m = _NAME.match(metric.strip().lower())
    if not m or (m["fam"] not in _FAMILIES and m["fam"] not in ("mrr", "ndcg", "map")):
        raise ValueError(
            f"unknown metric {metric!r}; use ndcg@k, recall@k, precision@k, map, map@k, mrr@k or ndcg"
        )
    k = int(m["k"]) if m["k"] else None
    if k is not None and k < 1:
        raise ValueError(f"metric {metric!r}: cutoff must be positive")
    if m["fam"] in ("recall", "precision", "p") and k is None:
        raise ValueError(f"metric {metric!r} needs a cutoff, e.g. {m['fam']}@100")
    return m["fam"], k


def remove_self_hits(run: Run) -> Run:
    """BEIR's convention: drop each query's own id from its results."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def _truncate(run: Run, k: int) -> Run:
    return {q: dict(ranked(docs)[:k]) for q, docs in run.items()}


def evaluate_per_query(
    qrels: dict[str, dict[str, int]],
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
    remove_self: bool = True,
) -> dict[str, dict[str, float]]:
    """Per-query scores ``{qid: {metric: value}}`` for every judged query."""
    import pytrec_eval

    if not qrels:
        raise ValueError("qrels are empty")
    parsed = [(name, *_parse(name)) for name in metrics]
    if remove_self:
        run = remove_self_hits(run)
    run = {q: docs for q, docs in run.items() if q in qrels}
    out: dict[str, dict[str, float]] = {q: {} for q in qrels}

    def collect(measures: Iterable[str], r: Run, wanted: list[tuple[str, str]]) -> None:
        if not r:
            return
        res = pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(r)
        for q, values in res.items():
            for name, key in wanted:
                out[q][name] = float(values[key])

    plain: list[tuple[str, str]] = []
    measures: set[str] = set()
    for name, fam, k in parsed:
        if fam == "mrr":
            continue
        if fam == "ndcg" and k is None:
            measures.add("ndcg")
            plain.append((name, "ndcg"))
        elif fam == "map" and k is None:
            measures.add("map")
            plain.append((name, "map"))
        else:
            family, prefix = _FAMILIES[fam]
            measures.add(f"{family}.{k}")
            plain.append((name, f"{prefix}{k}"))
    collect(measures, run, plain)
    for name, fam, k in parsed:
        if fam == "mrr":  # trec_eval has no cutoff for recip_rank: truncate the run first
            collect({"recip_rank"}, _truncate(run, k) if k else run, [(name, "recip_rank")])
    for q in out:  # judged queries without results score 0 (trec_eval -c)
        for name, _, _ in parsed:
            out[q].setdefault(name, 0.0)
    return out


def evaluate(
    qrels: dict[str, dict[str, int]],
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
    remove_self: bool = True,
    per_query: bool = False,
):
    """Mean of each metric over the judged queries; with ``per_query`` also the per-query table.

    Returns ``{metric: mean}``, or ``({metric: mean}, {qid: {metric: value}})`` if ``per_query``.
    """
    table = evaluate_per_query(qrels, run, metrics, remove_self)
    n = len(table)
    means = {name: sum(v[name] for v in table.values()) / n for name in metrics}
    return (means, table) if per_query else means
