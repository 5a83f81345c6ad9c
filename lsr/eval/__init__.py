"""Evaluation: BEIR datasets and corpora, trec_eval-exact metrics, TREC run files."""
from lsr.eval.datasets import (
    BeirDataset,
    Corpus,
    DataFormatError,
    Document,
    iter_corpus,
    load_beir,
    read_corpus,
    read_qrels,
    read_queries,
)
from lsr.eval.metrics import DEFAULT_METRICS, evaluate, evaluate_per_query
from lsr.eval.runs import read_run, write_run

__all__ = [
    "BeirDataset", "Corpus", "DataFormatError", "Document", "iter_corpus", "load_beir", "read_corpus",
    "read_qrels", "read_queries", "DEFAULT_METRICS", "evaluate", "evaluate_per_query", "read_run", "write_run",
]
