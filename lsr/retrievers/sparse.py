"""Sparse retrievers: a sparse encoder plus lsr's inverted index.

:class:`SparseRetriever` works with any encoder that has ``encode_documents`` and
``encode_queries`` returning :class:`~lsr.types.SparseBatch` (an encoder that must learn
corpus statistics first, like BM25, provides ``fit_documents`` instead), plus ``save`` /
``load`` and a ``name``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.errors import IndexFormatError
from lsr.retrievers.base import (
    Retriever,
    SearchResults,
    as_queries,
    batched_search,
    make_options,
    model_or_encoder,
    options_for_encoder,
    write_encoder_and_index,
)
from lsr.retrievers.options import BM25Options, InferenceFreeOptions, SpladeOptions
from lsr.types import SparseBatch
from lsr.index.inverted import InvertedIndex

logger = logging.getLogger(__name__)

__all__ = ["SparseRetriever", "BM25Retriever", "SpladeRetriever", "InferenceFreeRetriever", "index_encoded",
           "is_encoded"]


def _blank_rows_emptied(vectors: Any, texts: Sequence[str]) -> Any:
    """``vectors`` with the rows of blank texts emptied: a document or query without text matches
    nothing (a learned encoder would give it the weights of its special tokens alone)."""
    blank = np.fromiter((not str(t).strip() for t in texts), dtype=bool, count=len(texts))
    if not blank.any() or not isinstance(vectors, SparseBatch):
        return vectors
    lengths = np.diff(vectors.indptr)
    keep = np.repeat(~blank, lengths)
    indptr = np.zeros_like(vectors.indptr)
    np.cumsum(np.where(blank, 0, lengths), out=indptr[1:])
    return SparseBatch(indptr, vectors.indices[keep], vectors.data[keep], vectors.vocab_size, vectors.vocab)


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
        self.index_vectors(doc_ids, _blank_rows_emptied(vectors, texts))

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

    def search(self, queries: str | Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        if self.inverted_index is None:
            raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
        index = self.inverted_index

        def step(batch: list[str], kk: int) -> SearchResults:
            # a blank query matches nothing, as a blank document does (not its special tokens' expansion)
            return index.search(_blank_rows_emptied(self.encoder.encode_queries(batch), batch), k=kk, threads=threads)

        return batched_search(as_queries(queries), k, show_progress, step, index.doc_ids)

    def _write(self, directory: Path) -> dict[str, Any]:
        write_encoder_and_index(directory, self.encoder, self.inverted_index)
        return {"encoder": self.encoder.config()}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "SparseRetriever":
        encoder = cls.encoder_type.load(directory / "encoder")
        # the retriever manifest already verified every file's checksum
        index = InvertedIndex.load(directory / "index", mmap=mmap, verify=False)
        return cls(encoder, index)


class BM25Retriever(SparseRetriever):
    """BM25 (Anserini defaults k1=0.9, b=0.4) through the inverted index.

    >>> r = BM25Retriever(k1=1.2, b=0.75)
    >>> r.index(["d1", "d2"], ["heart disease", "stock markets"])
    >>> r.search("heart", k=1).hits(0)[0][0]
    'd1'
    """

    name = "bm25"
    options_class = BM25Options

    def __init__(self, encoder: Any = None, index: InvertedIndex | None = None, **options: Any) -> None:
        from lsr.encoders.bm25 import BM25Encoder

        if encoder is not None:  # its k1 and b are the options (a different k1 given is refused)
            self.options = options_for_encoder(type(self), encoder, options)
        else:
            self.options = make_options(type(self), None, options)
            encoder = BM25Encoder(k1=self.options.k1, b=self.options.b)
        super().__init__(encoder, index)

    @classmethod
    def _from_options(cls, options: BM25Options) -> "BM25Retriever":
        return cls(k1=options.k1, b=options.b)

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "BM25Retriever":
        from lsr.encoders.bm25 import BM25Encoder

        encoder = BM25Encoder.load(directory / "encoder")
        return cls(encoder, InvertedIndex.load(directory / "index", mmap=mmap, verify=False),
                   k1=encoder.k1, b=encoder.b)


# ---------------------------------------------------------------------------- learned sparse
class SpladeRetriever(SparseRetriever):
    """SPLADE documents and queries (:class:`~lsr.encoders.splade.SpladeEncoder`) over the inverted index.

    Built from a model directory or hub id and the fields of :class:`SpladeOptions`:

    >>> r = SpladeRetriever("naver/splade-v3", doc_max_length=512)    # doctest: +SKIP
    >>> r.index(doc_ids, texts); r.search("what causes heart disease", k=10)  # doctest: +SKIP
    """

    name = "splade"
    options_class: type = SpladeOptions
    index_options = ("doc_vectors",)

    def __init__(self, model: Any = None, index: InvertedIndex | None = None, **options: Any) -> None:
        name, encoder = model_or_encoder(model)
        if encoder is not None:  # an encoder object: its settings are the options (see options_for_encoder)
            own = {k: getattr(encoder, a) for k, a in (("device", "device_name"), ("torch_threads", "threads"))
                   if hasattr(encoder, a)}
            self.options = options_for_encoder(type(self), encoder, options, **own)
        else:
            if name is not None:
                options["model"] = name
            self.options = make_options(type(self), None, options)
        if encoder is None:
            encoder = self.encoder_class()(self.options.model, **self._encoder_args())
            if self._needs_model():
                encoder.load_model()  # fail now, with a clear message, if the checkpoint does not load
        super().__init__(encoder, index)
        self.doc_vectors = self.options.doc_vectors

    def _encoder_args(self) -> dict[str, Any]:
        return self.options.encoder_args()

    def _needs_model(self) -> bool:
        return True

    @classmethod
    def encoder_class(cls) -> type:
        from lsr.encoders.splade import SpladeEncoder

        return SpladeEncoder

    @classmethod
    def _from_options(cls, options: Any) -> "SpladeRetriever":
        import dataclasses

        return cls(**dataclasses.asdict(options))

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        """Encode and index the corpus, or index the pre-encoded ``doc_vectors`` shards (``lsr encode``)."""
        if self.doc_vectors is None:
            return super().index(doc_ids, texts, show_progress)
        from lsr.io.shards import load_shards, read_progress

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
        encoder = cls.encoder_class().load(directory / "encoder")
        # the retriever manifest already verified every file's checksum
        return cls(encoder, InvertedIndex.load(directory / "index", mmap=mmap, verify=False))


class InferenceFreeRetriever(SpladeRetriever):
    """Inference-free sparse retrieval: model-encoded documents, IDF-weighted tokenizer queries."""

    name = "inference-free"
    options_class = InferenceFreeOptions

    @classmethod
    def encoder_class(cls) -> type:
        from lsr.encoders.inference_free import InferenceFreeEncoder

        return InferenceFreeEncoder

    def _encoder_args(self) -> dict[str, Any]:
        return {**self.options.encoder_args(), "idf": self.options.idf}

    def _needs_model(self) -> bool:
        return self.options.doc_vectors is None  # documents will be encoded: check the model loads


# ---------------------------------------------------------------------------- pre-encoded vectors
def is_encoded(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds encoded vectors (``lsr encode`` shards, an export directory, or a
    JsonVectorCollection / Seismic JSONL file) rather than a text corpus."""
    from lsr.io.interchange import EXPORT_SIDECAR, looks_like_vector_jsonl
    from lsr.io.shards import is_shards_dir

    path = Path(path)
    if path.is_dir():
        return is_shards_dir(path) or (path / EXPORT_SIDECAR).is_file()
    return path.suffix in {".jsonl", ".gz", ".json"} and looks_like_vector_jsonl(path)


def index_encoded(path: str | os.PathLike, output: str | os.PathLike, retriever: str | None = None,
                  overwrite: bool = False, show_progress: bool = False, **options: Any) -> SpladeRetriever:
    """Index pre-encoded document vectors at ``path`` and save the retriever to ``output``.

    For ``lsr encode`` shards the query encoder is rebuilt from their record of the encoder (kind,
    model, lengths, pruning, IDF table); ``options`` may change the query side (a ``model`` at
    another path, ``query_max_length``, ...), but not the documents' ``doc_max_length``,
    ``top_k`` or ``min_weight``, and ``retriever`` must be the recorded kind. For vector JSONL
    ``retriever`` (``splade`` or ``inference-free``) and a ``model`` say which query encoder.
    Shards are inverted one at a time into a build directory beside ``output`` (never whole in
    memory); vector JSONL is read whole.
    """
    from lsr.io.interchange import read_collection
    from lsr.io.manifest import remove_index
    from lsr.io.shards import is_shards_dir, read_progress

    path, output = Path(path), Path(output)
    classes = {"splade": SpladeRetriever, "inference-free": InferenceFreeRetriever}
    if is_shards_dir(path):
        cfg = read_progress(path)["encoder"]
        kind = cfg.get("type")
        if kind not in classes:
            raise ValueError(f"{path}: shards of a {kind!r} encoder; give the retriever and model")
        if retriever is not None and retriever != kind:
            raise ValueError(f"{path}: shards of a {kind!r} encoder, not {retriever!r}")
        # the documents were encoded with these: the saved encoder must record them as they were
        for key in ("doc_max_length", "top_k", "min_weight"):
            if key in cfg and options.get(key) is not None and options[key] != cfg[key]:
                raise ValueError(f"{path}: the documents were encoded with {key}={cfg[key]!r}, not "
                                 f"{options[key]!r} (the query side's options may differ, the documents' not)")
        recorded = {k: cfg[k] for k in ("doc_max_length", "query_max_length", "top_k", "min_weight") if k in cfg}
        if kind == "inference-free" and cfg.get("idf"):
            recorded["idf"] = cfg["idf"]
        model = options.get("model") or cfg["model"]  # another model for the queries (e.g. moved)
        r = classes[kind](**{**recorded, **options, "model": model, "doc_vectors": None})
        if cfg.get("vocab_size") is not None and r.encoder.vocab_size != cfg["vocab_size"]:
            raise ValueError(f"{path}: encoded over a vocabulary of {cfg['vocab_size']} terms, but {model} "
                             f"has {r.encoder.vocab_size}")
    else:
        if retriever not in classes:
            raise ValueError("encoded vectors need the splade or inference-free retriever (the query encoder)")
        r = classes[retriever](**{**options, "doc_vectors": None})
    if is_shards_dir(path):
        work = output.parent / f".{output.name}.build-{os.getpid()}"
        try:
            r.index_shards(path, work, show_progress=show_progress)
            r.save(output, overwrite=overwrite)
        finally:
            remove_index(work)
        return SpladeRetriever.load(output) if isinstance(r, SpladeRetriever) else r
    doc_ids, vectors = read_collection(path, vocab=r.encoder.vocab)
    r.index_vectors(doc_ids, vectors)
    r.save(output, overwrite=overwrite)
    return r
