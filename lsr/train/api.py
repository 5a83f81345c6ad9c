"""``lsr train`` as functions: build the training data, then train (``lsr.encoders.sparse_training``).

>>> summary = train("../shared/data/beir/scifact", "out/scifact-trained", init="../shared/models/splade-tiny",
...                 idf="../shared/models/opensearch-inference-free-idf/idf.json",
...                 teachers="bm25,splade=../shared/models/splade-tiny")   # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lsr.train.data import (CandidateSet, build_candidates, load_corpus, load_split, pseudo_split,
                            require_labelled)
from lsr.train.teachers import LABELS, make_teachers, parse_teachers

logger = logging.getLogger(__name__)

__all__ = ["prepare", "train", "QUERY_MODES", "DEFAULT_TEACHERS", "DATA_FILE"]

QUERY_MODES = ("train", "pseudo")
DEFAULT_TEACHERS = "bm25"
DATA_FILE = "training_data.json"  # in OUT: where the training data came from


def prepare(source: str | os.PathLike, queries: str = "train", teachers: str = DEFAULT_TEACHERS, depth: int = 50,
            cache: str | os.PathLike | None = None, doc_vectors: str | os.PathLike | None = None,
            split: str = "train", pseudo_queries: int = 2000, pseudo_seed: int = 13,
            max_queries: int | None = None, show_progress: bool = False) -> tuple[CandidateSet, list[float]]:
    """The candidate set of ``source`` (a BEIR directory, or a corpus file for ``queries="pseudo"``)
    and the teachers' weights.

    ``queries="train"``: the BEIR split ``split`` (train, or dev) with its labelled positives;
    ``"pseudo"``: ``pseudo_queries`` queries made from the corpus (:mod:`lsr.train.pseudo`).
    ``max_queries``: train on a sample of the split's queries (seeded by ``pseudo_seed``)."""
    from lsr.io.shards import corpus_fingerprint

    if queries not in QUERY_MODES:
        raise ValueError(f"queries must be one of {', '.join(QUERY_MODES)}, got {queries!r}")
    spec = parse_teachers(teachers)
    corpus = load_corpus(source)
    if queries == "train":
        if not Path(source).is_dir():
            raise ValueError(f"{source}: supervised training needs a BEIR directory (qrels/{split}.tsv); "
                             "for a corpus file use --queries pseudo")
        tq = load_split(source, corpus, split, max_queries=max_queries, seed=pseudo_seed)
    else:
        tq = pseudo_split(corpus, pseudo_queries, pseudo_seed)
    texts = corpus.all_contents()
    labels = [w for name, _, w in spec if name == LABELS]
    if labels:  # refused before any teacher encodes
        require_labelled(tq)
    made, weights = make_teachers(spec, texts, corpus_fingerprint(corpus.ids, texts), cache,
                                  doc_vectors=doc_vectors, show_progress=show_progress)
    cands = build_candidates(tq, corpus, made, depth=depth, cache=cache, show_progress=show_progress)
    if labels:  # the qrels as the last teacher (the candidates come from the others)
        return cands.with_labels(), [*weights, labels[0]]
    return cands, weights


def train(source: str | os.PathLike, out: str | os.PathLike, init: str | os.PathLike,
          idf: str | os.PathLike | None = None, teachers: str = DEFAULT_TEACHERS, queries: str = "train",
          depth: int = 50, cache: str | os.PathLike | None = None, doc_vectors: str | os.PathLike | None = None,
          split: str = "train", pseudo_queries: int = 2000, pseudo_seed: int = 13, max_queries: int | None = None,
          settings: Any = None, show_progress: bool = False) -> dict[str, Any]:
    """Build the training data of ``source`` and train an inference-free encoder from ``init`` into
    ``out`` (resuming from ``out/checkpoints``); ``idf`` defaults to ``init``'s ``idf.json``.
    Returns the training summary plus ``data`` (where the data came from, also in
    ``out/training_data.json``)."""
    from lsr.encoders.sparse_training import TrainSettings, train_inference_free

    if idf is None:
        idf = Path(init) / "idf.json"
        if not idf.is_file():
            raise ValueError(f"{init} has no idf.json: give the query IDF table (--idf)")
    settings = settings if settings is not None else TrainSettings()
    cands, weights = prepare(source, queries, teachers, depth, cache, doc_vectors, split, pseudo_queries,
                             pseudo_seed, max_queries, show_progress)
    data = cands.to_training_data(weights)
    described = {"source": str(source), "queries": cands.queries.description, "depth": depth,
                 "teachers": cands.teacher_names, "weights": weights, **cands.stats(),
                 "positives_per_query": float(sum(p.sum() for p in cands.positives) / len(cands.positives))}
    logger.info("training data: %s", described)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_FILE).write_text(json.dumps(described, indent=2) + "\n")
    summary = train_inference_free(data, init, idf, out, settings, show_progress=show_progress)
    return {**summary, "data": described}
