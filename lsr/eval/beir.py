"""BEIR evaluation as one function: index a dataset's corpus, search a split, score with trec_eval.

``lsr eval`` is this function plus printing; a Python caller gets the same files and figures.

>>> from lsr.retrievers.sparse import BM25Retriever
>>> report = evaluate_beir("tests/data/tiny_beir", BM25Retriever(), k=10)     # doctest: +SKIP
>>> round(report.metrics["ndcg@10"], 4)                                    # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lsr.io.readers import BeirDataset, load_beir
from lsr.io.runs import read_run, write_run
from lsr.metrics import DEFAULT_METRICS, Run, evaluate, ranked, remove_self_hits
from lsr.retrievers.base import Retriever

logger = logging.getLogger(__name__)

__all__ = ["EvalReport", "evaluate_beir", "tune_hybrid"]


@dataclass
class EvalReport:
    """What one BEIR evaluation produced (the same as ``lsr eval``'s files)."""

    dataset: str
    split: str
    run: Run
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    config: dict[str, Any]
    index_seconds: float
    search_seconds: float
    notes: list[str] = field(default_factory=list)


def _tunes_on_dev(dataset: Path, split: str) -> bool:
    return (dataset / "qrels" / "dev.tsv").is_file() and split != "dev"


def tune_hybrid(retriever: Any, dataset: str | os.PathLike, ds: BeirDataset, folds: int, k: int, threads: int,
                show_progress: bool = False, notes: list[str] | None = None) -> Run | None:
    """Tune a hybrid's weights: on ``qrels/dev.tsv`` when the dataset has one (returns None: the
    split is then searched with the tuned weights), else by k-fold cross-validation over the
    evaluated queries (returns the held-out run, so no query is scored with weights tuned on it)."""
    notes = notes if notes is not None else []
    dataset = Path(dataset)
    if _tunes_on_dev(dataset, ds.split):
        dev = load_beir(dataset, split="dev")
        res = retriever.tune(dev.queries, dev.qrels, threads=threads, show_progress=show_progress)
        notes.append(f"tuned on {len(dev.queries)} dev queries: weights {res.weights} (dev {res.score:.4f})")
        return None
    cv = retriever.tune(ds.queries, ds.qrels, folds=folds, threads=threads, show_progress=show_progress, k=k)
    for i, w in enumerate(cv.fold_weights):
        notes.append(f"fold {i + 1}: weights {w}  held-out {cv.heldout_scores[i]:.4f}")
    notes.append(f"{folds}-fold cross-validated ndcg@10 {cv.score:.4f}; weights on all queries {retriever.weights}")
    return cv.run


def _json_value(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself: paths as strings, numpy scalars as numbers."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"cannot record a {type(value).__name__} in config.json")


def _recorded_options(retriever: Retriever, options: dict[str, Any] | None) -> dict[str, Any]:
    """The options ``config.json`` records: as given, else the retriever's own (all its fields)."""
    if options is None:
        own = getattr(retriever, "options", None)
        return own.to_dict() if hasattr(own, "to_dict") else {}
    return json.loads(json.dumps(dict(options), default=_json_value))  # fails now, not after the search


def evaluate_beir(dataset: str | os.PathLike, retriever: Retriever, output: str | os.PathLike | None = None,
                  split: str = "test", k: int = 1000, threads: int = 1, keep_self_hits: bool = False,
                  tune: bool = False, folds: int = 5, save_index: str | os.PathLike | None = None,
                  show_progress: bool = False, options: dict[str, Any] | None = None,
                  on_note: Callable[[str], None] | None = None) -> EvalReport:
    """Index ``dataset``'s corpus with ``retriever``, search ``split``'s queries, evaluate.

    Following BEIR, a query's own id is dropped from its results unless ``keep_self_hits``;
    ``k + 1`` results are retrieved so that ``k`` remain. With ``tune`` (hybrid retrievers only)
    the weights are tuned on the dev split, or cross-validated in ``folds`` over the evaluated
    queries. With ``output`` it writes ``run.trec``, ``metrics.json`` (computed from the run file as
    written, so exactly what trec_eval sees), ``per_query.tsv`` and ``config.json``.
    ``options`` (the retriever's options as given; by default all of ``retriever.options``) are
    recorded in ``config.json``.
    """
    from lsr import __version__

    if tune and not hasattr(retriever, "tune"):
        raise ValueError(f"tune needs a hybrid retriever, not {retriever.name!r}")
    if tune:  # found out now, not after the corpus is indexed
        from lsr.fusion.tuning import WEIGHTABLE

        if retriever.fusion not in WEIGHTABLE:
            raise ValueError(f"fusion method {retriever.fusion!r} takes no weights to tune "
                             f"(weighted: {', '.join(sorted(WEIGHTABLE))})")
    notes: list[str] = []
    recorded = _recorded_options(retriever, options)
    ds = load_beir(dataset, split=split)
    if tune and not _tunes_on_dev(Path(dataset), split) and len(ds.queries) < folds:
        raise ValueError(f"{len(ds.queries)} queries cannot make {folds} cross-validation folds (use fewer folds)")
    t0 = time.perf_counter()
    retriever.index(ds.corpus.ids, ds.corpus.all_contents(), show_progress=show_progress)
    t1 = time.perf_counter()
    qids = list(ds.queries)
    depth = k + (0 if keep_self_hits else 1)
    held_out = tune_hybrid(retriever, dataset, ds, folds, k + 1, threads, show_progress, notes) if tune else None
    if save_index is not None:
        retriever.save(save_index)
    if held_out is None:
        res = retriever.search([ds.queries[q] for q in qids], k=depth, threads=threads, show_progress=show_progress)
        run = res.to_run(qids)
    else:
        run = held_out
    t2 = time.perf_counter()
    if not keep_self_hits:
        run = remove_self_hits(run)
    run = {q: dict(ranked(docs)[:k]) for q, docs in run.items()}
    config = {
        "lsr_version": __version__, "dataset": str(dataset), "split": split, "retriever": retriever.name,
        "options": recorded, "k": k, "threads": threads,
        "remove_self_hits": not keep_self_hits, "n_docs": len(ds.corpus), "n_queries": len(qids),
        "index_seconds": round(t1 - t0, 3), "search_seconds": round(t2 - t1, 3),
        "queries_per_second": round(len(qids) / max(t2 - t1, 1e-9), 1),
    }
    if hasattr(retriever, "config") and callable(retriever.config):
        config["hybrid"] = retriever.config()
    if output is None:
        means, table = evaluate(ds.qrels, run, DEFAULT_METRICS, remove_self=not keep_self_hits, per_query=True)
    else:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        write_run(run, output / "run.trec", tag=retriever.name)
        means, table = evaluate(ds.qrels, read_run(output / "run.trec"), DEFAULT_METRICS,
                                remove_self=not keep_self_hits, per_query=True)
        (output / "metrics.json").write_text(json.dumps(means, indent=2) + "\n")
        with open(output / "per_query.tsv", "w") as f:
            f.write("query_id\t" + "\t".join(DEFAULT_METRICS) + "\n")
            for q, values in table.items():
                f.write(q + "\t" + "\t".join(f"{values[m]:.6f}" for m in DEFAULT_METRICS) + "\n")
        (output / "config.json").write_text(json.dumps(config, indent=2, default=_json_value) + "\n")
    for note in notes:
        logger.info(note)
        if on_note is not None:
            on_note(note)
    return EvalReport(ds.name, split, run, means, table, config, t1 - t0, t2 - t1, notes)
