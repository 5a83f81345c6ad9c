"""Late-interaction (multi-vector) retrievers: MaxSimRetriever and MuveraRetriever.

* ``maxsim``: :class:`~lsr.encoders.multivector.MultiVectorEncoder` + exact brute-force MaxSim
  over the float16 multi-vector store (the reference the FDE index approximates).
* ``muvera``: the same encoder + :class:`~lsr.index.muvera.FDEIndex` (FDE candidates re-ranked
  by exact MaxSim).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.io.manifest import load_ids, load_multivectors, save_ids, save_multivectors
from lsr.retrievers.base import Retriever, SearchResults, batched_search, check_texts, encoder_kwargs

logger = logging.getLogger(__name__)

__all__ = ["MaxSimRetriever", "MuveraRetriever"]


# ---------------------------------------------------------------------------- multi-vector
class MaxSimRetriever(Retriever):
    """Exact late interaction: brute-force MaxSim over every document's token vectors."""

    name = "maxsim"

    def __init__(self, encoder: Any, docs: Any = None, doc_ids: Sequence[str] | None = None) -> None:
        self.encoder = encoder
        self.docs = docs
        self.doc_ids = None if doc_ids is None else np.asarray([str(d) for d in doc_ids], dtype=object)

    @classmethod
    def _encoder(cls, options: dict[str, Any]) -> Any:
        from lsr.encoders.multivector import MultiVectorEncoder

        kw = encoder_kwargs(options)
        return MultiVectorEncoder(options["model"], **kw)

    @classmethod
    def from_options(cls, **options: Any) -> "MaxSimRetriever":
        return cls(cls._encoder(options))

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress))

    def index_vectors(self, doc_ids: Sequence[str], docs: Any) -> None:
        """Use already-encoded document multi-vectors (stored as float16)."""
        from lsr.types import MultiVectors

        if len(doc_ids) != len(docs):
            raise ValueError(f"{len(doc_ids)} ids for {len(docs)} documents")
        if len(set(map(str, doc_ids))) != len(doc_ids):
            raise ValueError("duplicate document ids")
        self.docs = MultiVectors(np.asarray(docs.vectors, dtype=np.float16), docs.offsets)
        self.doc_ids = np.asarray([str(d) for d in doc_ids], dtype=object)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        from lsr.index.maxsim import maxsim_search

        if self.docs is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return batched_search(queries, k, show_progress, lambda b: maxsim_search(
            self.encoder.encode_queries(b), self.docs, k=k), self.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.docs is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        fields = save_multivectors(directory, self.docs)
        save_ids(directory, "doc_ids.parquet", self.doc_ids)
        return {"encoder": self.encoder.config(), "multivectors": fields}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "MaxSimRetriever":
        from lsr.encoders.multivector import MultiVectorEncoder
        from lsr.types import MultiVectors

        docs = load_multivectors(directory, config.get("multivectors") or {}, "multivectors", mmap)
        return cls(MultiVectorEncoder.load(directory / "encoder"), docs,
                   load_ids(directory, "doc_ids.parquet", len(docs)))


class MuveraRetriever(Retriever):
    """MUVERA: FDE search (FAISS) for ``candidates`` documents, re-ranked by exact MaxSim."""

    name = "muvera"

    def __init__(self, encoder: Any, index: Any = None, fde: dict[str, Any] | None = None,
                 candidates: int | None = None, index_type: str = "flat") -> None:
        from lsr.index.muvera import DEFAULT_CANDIDATES

        self.encoder = encoder
        self.fde_index = index
        self.fde = dict(fde or {})  # FDEConfig fields; d_proj None = identity projection
        self.candidates = int(candidates or DEFAULT_CANDIDATES)
        self.index_type = index_type

    @classmethod
    def from_options(cls, **options: Any) -> "MuveraRetriever":
        fde = {key: options.get(f"fde_{key}") for key in ("k_sim", "d_proj", "reps", "final_dim")}
        fde = {key: value for key, value in fde.items() if value is not None}  # unset: FDEConfig default
        if fde.get("d_proj") == 0:
            fde["d_proj"] = None  # 0 on the command line = identity projection
        return cls(MaxSimRetriever._encoder(options), fde=fde, candidates=options.get("candidates"),
                   index_type=options.get("index_type") or "flat")

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        check_texts(doc_ids, texts)
        self.index_vectors(doc_ids, self.encoder.encode_documents(texts, show_progress=show_progress),
                           show_progress=show_progress)

    def index_vectors(self, doc_ids: Sequence[str], docs: Any, show_progress: bool = False) -> None:
        """Build the FDE index from already-encoded document multi-vectors."""
        from lsr.index.muvera import FDEConfig, FDEIndex

        config = FDEConfig(dim=docs.dim, **self.fde)
        self.fde_index = FDEIndex.build(docs, config, doc_ids=doc_ids, candidates=self.candidates,
                                        index_type=self.index_type, show_progress=show_progress)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        if self.fde_index is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return batched_search(queries, k, show_progress, lambda b: self.fde_index.search(
            self.encoder.encode_queries(b), k=k, threads=threads), self.fde_index.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.fde_index is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        (directory / "index").mkdir()
        self.fde_index._write(directory / "index")
        return {"encoder": self.encoder.config(), "fde": self.fde_index.encoder.config.to_dict(),
                "candidates": self.fde_index.candidates}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "MuveraRetriever":
        from lsr.encoders.multivector import MultiVectorEncoder
        from lsr.index.muvera import FDEIndex

        index = FDEIndex.load(directory / "index", mmap=mmap, verify=False)
        cfg = index.encoder.config.to_dict()
        fde = {k: cfg[k] for k in ("k_sim", "d_proj", "reps", "final_dim", "fill_empty_partitions", "seed")}
        return cls(MultiVectorEncoder.load(directory / "encoder"), index, fde, index.candidates,
                   index.dense.index_type)
