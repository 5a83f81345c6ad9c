"""Dense (bi-encoder) retrieval: DenseRetriever.

* ``dense``: :class:`~lsr.encoders.embedding.DenseEncoder` + :class:`~lsr.index.dense.DenseIndex`.
* ``maxsim``: :class:`~lsr.encoders.multivector.MultiVectorEncoder` + exact brute-force MaxSim
  over the float16 multi-vector store (the reference the FDE index approximates).
* ``muvera``: the same encoder + :class:`~lsr.index.muvera.FDEIndex` (FDE candidates re-ranked
  by exact MaxSim).

Saved retrievers reference the model (path or hub id) in ``encoder/encoder.json``; the index
files sit beside it. ``cache_dir`` (CLI ``--embedding-cache``) stores encodings by content hash.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.retrievers.base import Retriever, SearchResults, batched_search, check_texts, encoder_kwargs

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever"]

# ---------------------------------------------------------------------------- dense
class DenseRetriever(Retriever):
    """Bi-encoder + FAISS. ``index_type``: flat (exact), hnsw, ivf, ivfpq."""

    name = "dense"

    def __init__(self, encoder: Any, index: Any = None, index_type: str = "flat",
                 index_params: dict[str, Any] | None = None) -> None:
        self.encoder = encoder
        self.dense_index = index
        self.index_type = index_type
        self.index_params = dict(index_params or {})

    @classmethod
    def from_options(cls, **options: Any) -> "DenseRetriever":
        from lsr.encoders.embedding import DenseEncoder

        kw = encoder_kwargs(options)
        return cls(DenseEncoder(options["model"], **kw),
                   index_type=options.get("index_type") or "flat")

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress))

    def index_vectors(self, doc_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index already-encoded document vectors."""
        from lsr.index.dense import DenseIndex

        self.dense_index = DenseIndex.build(vectors, doc_ids=doc_ids, index_type=self.index_type,
                                            metadata={"encoder": self.encoder.config()}, **self.index_params)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        if self.dense_index is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return batched_search(queries, k, show_progress, lambda b: self.dense_index.search(
            self.encoder.encode_queries(b), k=k, threads=threads), self.dense_index.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.dense_index is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        (directory / "index").mkdir()
        self.dense_index._write(directory / "index")
        return {"encoder": self.encoder.config(), "index_type": self.index_type}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "DenseRetriever":
        from lsr.encoders.embedding import DenseEncoder
        from lsr.index.dense import DenseIndex

        index = DenseIndex.load(directory / "index", mmap=mmap, verify=False)
        return cls(DenseEncoder.load(directory / "encoder"), index, index.index_type, index.params)
