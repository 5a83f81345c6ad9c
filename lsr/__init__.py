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
    "SparseBatch": "lsr.types",
    "InvertedIndex": "lsr.index.inverted",
    "IndexFormatError": "lsr.errors",
    "BM25Encoder": "lsr.encoders.bm25",
    "EnglishAnalyzer": "lsr.encoders.analysis",
    "BeirDataset": "lsr.io.readers",
    "load_beir": "lsr.io.readers",
    "read_corpus": "lsr.io.readers",
    "read_queries": "lsr.io.readers",
    "read_qrels": "lsr.io.readers",
    "DataFormatError": "lsr.errors",
    "evaluate": "lsr.metrics",
    "read_run": "lsr.io.runs",
    "write_run": "lsr.io.runs",
    "Retriever": "lsr.retrievers.base",
    "SearchResults": "lsr.types",
    "SparseRetriever": "lsr.retrievers.sparse",
    "BM25Retriever": "lsr.retrievers.sparse",
    "load_retriever": "lsr.retrievers.base",
    "SpladeEncoder": "lsr.encoders.splade",
    "InferenceFreeEncoder": "lsr.encoders.inference_free",
    "SpladeRetriever": "lsr.retrievers.sparse",
    "InferenceFreeRetriever": "lsr.retrievers.sparse",
    "DenseEncoder": "lsr.encoders.embedding",
    "MultiVectorEncoder": "lsr.encoders.multivector",
    "MultiVectors": "lsr.types",
    "DenseIndex": "lsr.index.dense",
    "FDEConfig": "lsr.index.muvera",
    "FDEEncoder": "lsr.index.muvera",
    "FDEIndex": "lsr.index.muvera",
    "DenseRetriever": "lsr.retrievers.bi_encoder",
    "MaxSimRetriever": "lsr.retrievers.late_interaction",
    "MuveraRetriever": "lsr.retrievers.late_interaction",
    # hybrid layer
    "HybridRetriever": "lsr.retrievers.hybrid",
    "fuse": "lsr.fusion.combine",
    "fuse_arrays": "lsr.fusion.combine",
    "FUSIONS": "lsr.fusion.combine",
    "normalize": "lsr.fusion.normalize",
    "NORMALIZERS": "lsr.fusion.normalize",
    "tune_weights": "lsr.fusion.tuning",
    "cross_validate": "lsr.fusion.tuning",
    "SparsePRF": "lsr.retrievers.prf",
    "DensePRF": "lsr.retrievers.prf",
    "rm3": "lsr.retrievers.prf",
    "rocchio": "lsr.retrievers.prf",
    # end hybrid layer
    "DocIds": "lsr.types",
    "ModelNotFoundError": "lsr.errors",
    "evaluate_beir": "lsr.eval.beir",
    "fuse_runs": "lsr.fusion.tuning",
    "index_encoded": "lsr.retrievers.sparse",
    "BM25Options": "lsr.retrievers.options",
    "SpladeOptions": "lsr.retrievers.options",
    "InferenceFreeOptions": "lsr.retrievers.options",
    "DenseOptions": "lsr.retrievers.options",
    "MaxSimOptions": "lsr.retrievers.options",
    "MuveraOptions": "lsr.retrievers.options",
    "HybridOptions": "lsr.retrievers.options",
    "Collection": "lsr.collection.collection",
    "TieredMergePolicy": "lsr.collection.merge_policy",
    "EncodedDocuments": "lsr.collection.encoded",
    "CollectionLockedError": "lsr.errors",
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
