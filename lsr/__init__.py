"""lsr: learned-sparse and hybrid retrieval.

``import lsr`` is cheap: heavy modules (numba kernels, torch, faiss) load on first use.

>>> import lsr
>>> sorted(n for n in lsr.__all__ if n[0].isupper())[:3]
['BM25Encoder', 'BeirDataset', 'InvertedIndex']
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily on first attribute access)
_EXPORTS = {
    "SparseBatch": "lsr.sparse",
    "InvertedIndex": "lsr.index.inverted",
    "IndexFormatError": "lsr.index._format",
    "BM25Encoder": "lsr.encoders.bm25",
    "EnglishAnalyzer": "lsr.encoders.analyzer",
    "BeirDataset": "lsr.eval.datasets",
    "load_beir": "lsr.eval.datasets",
    "read_corpus": "lsr.eval.datasets",
    "read_queries": "lsr.eval.datasets",
    "read_qrels": "lsr.eval.datasets",
    "DataFormatError": "lsr.eval.datasets",
    "evaluate": "lsr.eval.metrics",
    "read_run": "lsr.eval.runs",
    "write_run": "lsr.eval.runs",
    "Retriever": "lsr.hybrid.base",
    "SearchResults": "lsr.hybrid.base",
    "SparseRetriever": "lsr.hybrid.sparse",
    "BM25Retriever": "lsr.hybrid.sparse",
    "load_retriever": "lsr.hybrid.base",
    "SpladeEncoder": "lsr.encoders.splade",
    "InferenceFreeEncoder": "lsr.encoders.inference_free",
    "SpladeRetriever": "lsr.hybrid.sparse",
    "InferenceFreeRetriever": "lsr.hybrid.sparse",
    "DenseEncoder": "lsr.encoders.dense",
    "MultiVectorEncoder": "lsr.encoders.multivector",
    "MultiVectors": "lsr.index.multivectors",
    "DenseIndex": "lsr.index.dense",
    "FDEConfig": "lsr.index.muvera",
    "FDEEncoder": "lsr.index.muvera",
    "FDEIndex": "lsr.index.muvera",
    "DenseRetriever": "lsr.hybrid.dense",
    "MaxSimRetriever": "lsr.hybrid.dense",
    "MuveraRetriever": "lsr.hybrid.dense",
    # hybrid layer
    "HybridRetriever": "lsr.hybrid.hybrid",
    "fuse": "lsr.hybrid.fusion",
    "fuse_arrays": "lsr.hybrid.fusion",
    "FUSIONS": "lsr.hybrid.fusion",
    "normalize": "lsr.hybrid.normalize",
    "NORMALIZERS": "lsr.hybrid.normalize",
    "tune_weights": "lsr.hybrid.tuning",
    "cross_validate": "lsr.hybrid.tuning",
    "SparsePRF": "lsr.hybrid.prf",
    "DensePRF": "lsr.hybrid.prf",
    "rm3": "lsr.hybrid.prf",
    "rocchio": "lsr.hybrid.prf",
    # end hybrid layer
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lsr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
