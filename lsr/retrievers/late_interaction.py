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
from lsr.retrievers.base import (
    Retriever,
    SearchResults,
    as_queries,
    batched_search,
    check_texts,
    encoded_search,
    encoder_settings,
    make_options,
    model_or_encoder,
    options_for_encoder,
    write_encoder_and_index,
)
from lsr.retrievers.options import MaxSimOptions, MuveraOptions

logger = logging.getLogger(__name__)

__all__ = ["MaxSimRetriever", "MuveraRetriever"]


def _encoder(retriever: Any, model: Any, options: dict[str, Any]) -> Any:
    """Set ``retriever.options`` and return its MultiVectorEncoder (given, or made from the model)."""
    name, encoder = model_or_encoder(model)
    if encoder is not None:  # its settings are the options (see options_for_encoder)
        retriever.options = options_for_encoder(type(retriever), encoder, options, **encoder_settings(encoder))
    else:
        if name is not None:
            options["model"] = name
        retriever.options = make_options(type(retriever), None, options)
    if encoder is None:
        from lsr.encoders.multivector import MultiVectorEncoder

        encoder = MultiVectorEncoder(retriever.options.model, **retriever.options.encoder_args())
    return encoder


def _fde_options(fde: dict[str, Any]) -> dict[str, Any]:
    """The ``fde_*`` options of an FDEConfig dict (``d_proj`` None, the identity, is option 0)."""
    out = {f"fde_{k}": fde[k] for k in ("reps", "k_sim", "d_proj", "final_dim") if k in fde}
    if "fde_d_proj" in out and out["fde_d_proj"] is None:
        out["fde_d_proj"] = 0
    return out


# ---------------------------------------------------------------------------- multi-vector
class MaxSimRetriever(Retriever):
    """Exact late interaction: brute-force MaxSim over every document's token vectors."""

    name = "maxsim"

    options_class: type = MaxSimOptions

    def __init__(self, model: Any = None, docs: Any = None, doc_ids: Sequence[str] | None = None,
                 **options: Any) -> None:
        """``model``: a model directory, hub id or MultiVectorEncoder; ``options``: :class:`MaxSimOptions`."""
        self.encoder = _encoder(self, model, options)
        self.docs = docs
        self.doc_ids = None if doc_ids is None else np.asarray([str(d) for d in doc_ids], dtype=object)

    @classmethod
    def _from_options(cls, options: Any) -> "MaxSimRetriever":
        import dataclasses

        return cls(**dataclasses.asdict(options))

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

    def search(self, queries: str | Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        from lsr.index.maxsim import maxsim_search

        if self.docs is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        return batched_search(as_queries(queries), k, show_progress, lambda batch, kk: maxsim_search(
            self.encoder.encode_queries(batch), self.docs, k=kk, doc_ids=self.doc_ids), self.doc_ids)

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

    options_class = MuveraOptions
    index_options = ("fde_reps", "fde_k_sim", "fde_d_proj", "fde_final_dim", "candidates", "index_type")

    def __init__(self, model: Any = None, index: Any = None, fde: dict[str, Any] | None = None,
                 **options: Any) -> None:
        """``model``: a model directory, hub id or MultiVectorEncoder; ``options``: :class:`MuveraOptions`
        (``fde``: a full FDEConfig dict, as a loaded index has; it fills the ``fde_*`` options, and an
        ``fde_*`` option that differs from it is refused)."""
        if fde is not None:
            for key, value in _fde_options(fde).items():
                if options.get(key) is not None and options[key] != value:
                    raise ValueError(f"{key}={options[key]!r} conflicts with the given FDE configuration's {value!r}")
                options[key] = value
        self.encoder = _encoder(self, model, options)
        self.fde_index = index
        self.fde = dict(fde) if fde is not None else self.options.fde_args()  # FDEConfig fields
        self.candidates = self.options.candidates
        self.index_type = self.options.index_type

    @classmethod
    def _from_options(cls, options: MuveraOptions) -> "MuveraRetriever":
        import dataclasses

        return cls(**dataclasses.asdict(options))

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

    def search(self, queries: str | Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        return encoded_search(self.encoder, self.fde_index, queries, k, threads, show_progress)

    def _write(self, directory: Path) -> dict[str, Any]:
        write_encoder_and_index(directory, self.encoder, self.fde_index)
        return {"encoder": self.encoder.config(), "fde": self.fde_index.encoder.config.to_dict(),
                "candidates": self.fde_index.candidates}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "MuveraRetriever":
        from lsr.encoders.multivector import MultiVectorEncoder
        from lsr.index.muvera import FDEIndex

        index = FDEIndex.load(directory / "index", mmap=mmap, verify=False)
        cfg = index.encoder.config.to_dict()
        fde = {k: cfg[k] for k in ("k_sim", "d_proj", "reps", "final_dim", "fill_empty_partitions", "seed")}
        return cls(MultiVectorEncoder.load(directory / "encoder"), index, fde, candidates=index.candidates,
                   index_type=index.dense.index_type)
