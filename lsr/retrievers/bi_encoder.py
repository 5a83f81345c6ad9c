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

from lsr.retrievers.base import (
    Retriever,
    SearchResults,
    check_texts,
    encoded_search,
    encoder_settings,
    make_options,
    model_or_encoder,
    options_for_encoder,
    write_encoder_and_index,
)
from lsr.retrievers.options import DenseOptions

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever"]

# ---------------------------------------------------------------------------- dense
class DenseRetriever(Retriever):
    """Bi-encoder + FAISS. ``index_type``: flat (exact), hnsw, ivf, ivfpq."""

    name = "dense"

    options_class = DenseOptions
    index_options = ("index_type",)

    def __init__(self, model: Any = None, index: Any = None, index_params: dict[str, Any] | None = None,
                 **options: Any) -> None:
        """``model``: a model directory, hub id or DenseEncoder; ``options``: fields of :class:`DenseOptions`.

        >>> r = DenseRetriever("sentence-transformers/all-MiniLM-L6-v2")   # doctest: +SKIP
        """
        name, encoder = model_or_encoder(model)
        if encoder is not None:  # its settings are the options (see options_for_encoder)
            self.options = options_for_encoder(type(self), encoder, options, **encoder_settings(encoder))
        else:
            if name is not None:
                options["model"] = name
            self.options = make_options(type(self), None, options)
        if encoder is None:
            from lsr.encoders.embedding import DenseEncoder

            encoder = DenseEncoder(self.options.model, **self.options.encoder_args())
        self.encoder = encoder
        self.dense_index = index
        self.index_type = self.options.index_type
        self.index_params = dict(index_params or {})

    @classmethod
    def _from_options(cls, options: DenseOptions) -> "DenseRetriever":
        import dataclasses

        return cls(**dataclasses.asdict(options))

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress))

    def index_vectors(self, doc_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index already-encoded document vectors."""
        from lsr.index.dense import DenseIndex

        self.dense_index = DenseIndex.build(vectors, doc_ids=doc_ids, index_type=self.index_type,
                                            metadata={"encoder": self.encoder.config()}, **self.index_params)

    def search(self, queries: str | Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        return encoded_search(self.encoder, self.dense_index, queries, k, threads, show_progress)

    def _write(self, directory: Path) -> dict[str, Any]:
        write_encoder_and_index(directory, self.encoder, self.dense_index)
        return {"encoder": self.encoder.config(), "index_type": self.index_type}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "DenseRetriever":
        from lsr.encoders.embedding import DenseEncoder
        from lsr.index.dense import DenseIndex

        index = DenseIndex.load(directory / "index", mmap=mmap, verify=False)
        return cls(DenseEncoder.load(directory / "encoder"), index, index.params, index_type=index.index_type)
