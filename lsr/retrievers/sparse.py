"""Sparse retrievers: a sparse encoder plus lsr's inverted index.

:class:`SparseRetriever` works with any encoder that has ``encode_documents`` and
``encode_queries`` returning :class:`~lsr.types.SparseBatch` (an encoder that must learn
corpus statistics first, like BM25, provides ``fit_documents`` instead), plus ``save`` /
``load`` and a ``name``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.retrievers.base import Retriever, SearchResults
from lsr.index.inverted import InvertedIndex

logger = logging.getLogger(__name__)

__all__ = ["SparseRetriever", "BM25Retriever", "SpladeRetriever", "InferenceFreeRetriever", "SEARCH_BATCH"]

SEARCH_BATCH = 256  # queries encoded and searched per step (progress granularity)


class SparseRetriever(Retriever):
    """Encoder + :class:`InvertedIndex`. Subclasses fix the encoder type and ``name``."""

    name = "sparse"
    encoder_type: type = object

    def __init__(self, encoder: Any, index: InvertedIndex | None = None) -> None:
        self.encoder = encoder
        self.inverted_index = index

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")
        if hasattr(self.encoder, "fit_documents"):
            vectors = self.encoder.fit_documents(texts, show_progress=show_progress)
        else:
            vectors = self.encoder.encode_documents(texts, show_progress=show_progress)
        self.index_vectors(doc_ids, vectors)

    def index_vectors(self, doc_ids: Sequence[str], vectors) -> None:
        """Index already-encoded document vectors (a SparseBatch or scipy matrix)."""
        self.inverted_index = InvertedIndex.from_csr(vectors, doc_ids=doc_ids,
                                                     metadata={"encoder": self.encoder.config()})

    def index_shards(self, shards_dir: str | Path, workdir: str | Path, show_progress: bool = False) -> None:
        """Index an ``lsr encode`` shards directory without loading it whole: the shards are
        inverted one at a time and merged (:func:`lsr.index.build.build_index`) into
        ``workdir`` (a new directory; remove it after :meth:`save`), then opened memory-mapped."""
        from lsr.index.build import build_index, shards_from_directory

        doc_ids, loaders = shards_from_directory(shards_dir)
        self.inverted_index = build_index(loaders, workdir, doc_ids=doc_ids, overwrite=False,
                                          metadata={"encoder": self.encoder.config()}, show_progress=show_progress)

    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        if self.inverted_index is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        if not show_progress and 0 < len(queries) <= SEARCH_BATCH:  # the RAG path: one small batch
            i, sc = self.inverted_index.search(self.encoder.encode_queries(list(queries)), k=k, threads=threads)
            return SearchResults(i, sc, self.inverted_index.doc_ids)
        from tqdm.auto import tqdm

        ids, scores = [], []
        with tqdm(total=len(queries), desc="search", unit="q", disable=not show_progress) as bar:
            for s in range(0, len(queries), SEARCH_BATCH):
                batch = list(queries[s:s + SEARCH_BATCH])
                q = self.encoder.encode_queries(batch)
                i, sc = self.inverted_index.search(q, k=k, threads=threads)
                ids.append(i)
                scores.append(sc)
                bar.update(len(batch))
        if not ids:
            return SearchResults(np.empty((0, k), np.int64), np.empty((0, k), np.float32),
                                 self.inverted_index.doc_ids)
        return SearchResults(np.concatenate(ids), np.concatenate(scores), self.inverted_index.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        if self.inverted_index is None:
            raise RuntimeError("nothing to save: the retriever has no index")
        (directory / "encoder").mkdir()
        self.encoder.save(directory / "encoder")
        (directory / "index").mkdir()
        self.inverted_index._write(directory / "index")
        return {"encoder": self.encoder.config()}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "SparseRetriever":
        encoder = cls.encoder_type.load(directory / "encoder")
        # the retriever manifest already verified every file's checksum
        index = InvertedIndex.load(directory / "index", mmap=mmap, verify=False)
        return cls(encoder, index)


class BM25Retriever(SparseRetriever):
    """BM25 (Anserini defaults k1=0.9, b=0.4) through the inverted index."""

    name = "bm25"

    def __init__(self, encoder: Any = None, index: InvertedIndex | None = None, k1: float = 0.9,
                 b: float = 0.4) -> None:
        from lsr.encoders.bm25 import BM25Encoder

        super().__init__(encoder or BM25Encoder(k1=k1, b=b), index)

    @classmethod
    def from_options(cls, **options: Any) -> "BM25Retriever":
        return cls(k1=options.get("k1") or 0.9, b=options.get("b") if options.get("b") is not None else 0.4)

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "BM25Retriever":
        from lsr.encoders.bm25 import BM25Encoder

        return cls(BM25Encoder.load(directory / "encoder"),
                   InvertedIndex.load(directory / "index", mmap=mmap, verify=False))


# ---------------------------------------------------------------------------- learned sparse
def _learned_encoder_args(name: str, options: dict[str, Any]) -> dict[str, Any]:
    model = options.get("model")
    if not model:
        raise ValueError(f"the {name} retriever needs --model (a model directory or Hugging Face hub id)")
    args: dict[str, Any] = {"model": model}
    for key in ("doc_max_length", "query_max_length", "batch_size", "device", "threads", "top_k", "min_weight",
                "precision"):
        if options.get(key) is not None:
            args[key] = options[key]
    return args


class SpladeRetriever(SparseRetriever):
    """SPLADE documents and queries (:class:`~lsr.encoders.splade.SpladeEncoder`) over the inverted index.

    >>> r = SpladeRetriever.from_options(model="path/to/splade")    # doctest: +SKIP
    >>> r.index(doc_ids, texts); r.search(["what causes heart disease"], k=10)  # doctest: +SKIP
    """

    name = "splade"

    def __init__(self, encoder: Any, index: InvertedIndex | None = None,
                 doc_vectors: str | Path | None = None) -> None:
        super().__init__(encoder, index)
        self.doc_vectors = doc_vectors

    @classmethod
    def encoder_class(cls) -> type:
        from lsr.encoders.splade import SpladeEncoder

        return SpladeEncoder

    @classmethod
    def from_options(cls, **options: Any) -> "SpladeRetriever":
        encoder = cls.encoder_class()(**_learned_encoder_args(cls.name, options))
        encoder.load_model()  # fail now, with a clear message, if the checkpoint does not load
        return cls(encoder, doc_vectors=options.get("doc_vectors"))

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        """Encode and index the corpus, or index the pre-encoded ``doc_vectors`` shards (``lsr encode``)."""
        if self.doc_vectors is None:
            return super().index(doc_ids, texts, show_progress)
        from lsr.io.shards import load_shards, read_progress
        from lsr.errors import IndexFormatError

        saved = read_progress(self.doc_vectors).get("encoder", {})
        mine = self.encoder.config()
        for key in ("model", "doc_max_length", "top_k", "min_weight", "vocab_size"):
            if saved.get(key) != mine.get(key):
                raise IndexFormatError(f"{self.doc_vectors}: encoded with {key}={saved.get(key)!r}, "
                                 f"but this retriever has {key}={mine.get(key)!r}")
        ids, vectors = load_shards(self.doc_vectors)
        if len(ids) != len(doc_ids) or set(ids) != set(map(str, doc_ids)):
            raise IndexFormatError(f"{self.doc_vectors}: encoded documents do not match the corpus "
                             f"({len(ids)} vs {len(doc_ids)} ids)")
        logger.info("indexing %d pre-encoded documents from %s", len(ids), self.doc_vectors)
        self.index_vectors(ids, vectors)

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "SparseRetriever":
        cls.encoder_type = cls.encoder_class()
        return super()._read(directory, config, mmap)


class InferenceFreeRetriever(SpladeRetriever):
    """Inference-free sparse retrieval: model-encoded documents, IDF-weighted tokenizer queries."""

    name = "inference-free"

    @classmethod
    def encoder_class(cls) -> type:
        from lsr.encoders.inference_free import InferenceFreeEncoder

        return InferenceFreeEncoder

    @classmethod
    def from_options(cls, **options: Any) -> "InferenceFreeRetriever":
        args = _learned_encoder_args(cls.name, options)
        encoder = cls.encoder_class()(idf=options.get("idf"), **args)
        if options.get("doc_vectors") is None:
            encoder.load_model()  # documents will be encoded: check the model loads
        return cls(encoder, doc_vectors=options.get("doc_vectors"))
