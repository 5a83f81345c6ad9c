"""Retrievers pair an encoder with an index: text in, ranked documents out.

Every retriever answers ``search(queries, k)`` with :class:`SearchResults` and persists to one
directory (``manifest.json`` naming the retriever, its configuration and files). The registry
maps the names the CLI's ``--retriever`` accepts to classes, imported lazily so that heavy
dependencies (torch, faiss) load only when used.

>>> from lsr.retrievers.sparse import BM25Retriever
>>> r = BM25Retriever()
>>> r.index(["d1", "d2"], ["heart disease and blood pressure", "stock markets fell"])
>>> res = r.search(["what causes heart disease"], k=2)
>>> res.doc_ids[res.ids[0, 0]], res.to_run(["q1"])["q1"].keys() == {"d1"}
('d1', True)
"""
from __future__ import annotations

import importlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from lsr.errors import IndexFormatError
from lsr.io.manifest import atomic_directory, field_dict, positive_int, read_manifest, resolve_dir, write_manifest
from lsr.types import SearchResults

__all__ = ["SearchResults", "Retriever", "RETRIEVERS", "retriever_class", "load_retriever"]

SEARCH_BATCH = 256  # queries encoded and searched per step (progress granularity)


def as_queries(queries: str | Sequence[str]) -> list[str]:
    """A list of query texts; one string is one query (not one query per character).

    A mapping (``read_queries``' ``{id: text}``) is refused: iterating it would search its ids.
    """
    if isinstance(queries, str):
        return [queries]
    if isinstance(queries, Mapping):
        raise TypeError("queries is a mapping (id -> text): search list(queries.values()) and pass "
                        "list(queries) to to_run()")
    if queries is None or isinstance(queries, (bytes, bytearray)) or not isinstance(queries, Iterable):
        raise TypeError(f"queries must be a string or a sequence of strings, not {type(queries).__name__}")
    queries = list(queries)
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"query {i} is a {type(q).__name__}, not a string")
    return queries


def batched_search(queries: Sequence[str], k: int, show_progress: bool,
                   step: Callable[[list[str], int], SearchResults], doc_ids: Any) -> SearchResults:
    """Encode and search ``queries`` in batches of :data:`SEARCH_BATCH` (``step(batch, k)``), with a
    progress bar when asked; ``k`` is capped at the number of documents."""
    k = min(positive_int(k, "k"), len(doc_ids))
    if k == 0:  # an empty corpus: nothing to encode the queries for
        n = len(queries)
        return SearchResults(np.full((n, 0), -1, np.int64), np.zeros((n, 0), np.float32), doc_ids)
    if not show_progress and 0 < len(queries) <= SEARCH_BATCH:  # the RAG path: one small batch
        return step(list(queries), k)
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(queries), desc="search", unit="q", disable=not show_progress) as bar:
        for s in range(0, len(queries), SEARCH_BATCH):
            batch = list(queries[s:s + SEARCH_BATCH])
            parts.append(step(batch, k))
            bar.update(len(batch))
    return SearchResults.concat(parts, k, doc_ids)


def encoded_search(encoder: Any, index: Any, queries: str | Sequence[str], k: int, threads: int,
                   show_progress: bool) -> SearchResults:
    """``queries`` encoded by ``encoder`` and searched in ``index``, in batches."""
    if index is None:
        raise RuntimeError("nothing indexed yet: call index() or load a saved retriever")
    return batched_search(as_queries(queries), k, show_progress, lambda batch, kk: index.search(
        encoder.encode_queries(batch), k=kk, threads=threads), index.doc_ids)


def write_encoder_and_index(directory: Path, encoder: Any, index: Any) -> None:
    """The encoder's files in ``directory/encoder``, the index's in ``directory/index``."""
    if index is None:
        raise RuntimeError("nothing to save: the retriever has no index")
    (directory / "encoder").mkdir()
    encoder.save(directory / "encoder")
    (directory / "index").mkdir()
    index._write(directory / "index")


def check_texts(doc_ids: Sequence[str], texts: Sequence[str]) -> None:
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")


def model_or_encoder(model: Any) -> tuple[str | None, Any]:
    """``(model id, None)`` for a model path or hub id, ``(None, encoder)`` for an encoder object."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return (None if model is None else os.fspath(model)), None
    return None, model


def _same_setting(given: Any, own: Any) -> bool:
    """Whether an option given equals an encoder's own setting (numbers by value, paths resolved)."""
    if given == own:
        return True
    if isinstance(given, (str, os.PathLike)) and isinstance(own, (str, os.PathLike)):
        a, b = Path(given), Path(own)
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return False


def encoder_settings(encoder: Any) -> dict[str, Any]:
    """Options a dense or multi-vector encoder holds outside its ``config()``: device, cache."""
    own = {}
    if hasattr(encoder, "device"):
        own["device"] = None if encoder.device is None else str(encoder.device)
    if hasattr(encoder, "cache_dir"):
        own["embedding_cache"] = None if encoder.cache_dir is None else str(encoder.cache_dir)
    return own


def options_for_encoder(cls: type, encoder: Any, given: dict[str, Any], **own: Any) -> Any:
    """The options of a retriever built around an encoder object: the encoder's settings
    (``encoder.config()``, plus ``own``: settings the caller read from elsewhere) fill the fields
    they name, so ``retriever.options`` says what the retriever does. An encoder-side option given
    as well is refused unless it equals the encoder's own: it would be silently ignored.
    ``cls.index_options`` are the fields that belong to the retriever, not to its encoder."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls.options_class)]
    config = encoder.config() if callable(getattr(encoder, "config", None)) else {}
    settings = {k: v for k, v in {**config, **own}.items() if k in names and k not in cls.index_options}
    if "model" in names and not settings.get("model"):
        settings["model"] = str(getattr(encoder, "model_name", None) or getattr(encoder, "model", None) or "encoder")
    for key, value in given.items():
        if key not in names or key in cls.index_options:
            continue
        if key not in settings:
            raise ValueError(f"{key}: set it on the encoder ({type(encoder).__name__} was given, with its own "
                             f"settings)")
        if not _same_setting(value, settings[key]):
            raise ValueError(f"{key}={value!r} conflicts with the given encoder's {key}={settings[key]!r} "
                             f"(an encoder object brings its own settings; build the retriever from a model "
                             f"id to choose them)")
    return make_options(cls, None, {**given, **settings})


RETRIEVER_FORMAT = "lsr.retriever"
RETRIEVER_FORMAT_VERSION = 1

# name -> "module:Class". Add a line here to make a retriever available to the CLI.
RETRIEVERS: dict[str, str] = {
    "bm25": "lsr.retrievers.sparse:BM25Retriever",
    "splade": "lsr.retrievers.sparse:SpladeRetriever",
    "inference-free": "lsr.retrievers.sparse:InferenceFreeRetriever",
    "dense": "lsr.retrievers.bi_encoder:DenseRetriever",
    "maxsim": "lsr.retrievers.late_interaction:MaxSimRetriever",
    "muvera": "lsr.retrievers.late_interaction:MuveraRetriever",
    "hybrid": "lsr.retrievers.hybrid:HybridRetriever",
}


class Retriever(ABC):
    """Base class: subclasses set ``name`` and implement index/search/_write/_read."""

    name: ClassVar[str]

    @abstractmethod
    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        """Encode and index a corpus (``texts[i]`` is the document with id ``doc_ids[i]``)."""

    @abstractmethod
    def search(self, queries: Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        """Top-``k`` documents for each query text."""

    #: the typed options of this retriever (a dataclass of :mod:`lsr.retrievers.options`)
    options_class: ClassVar[type]
    #: the options that configure the index, not the encoder (free to give with an encoder object)
    index_options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, options: Any = None, /, **fields: Any) -> "Retriever":
        """Build from an options dataclass (``cls.options_class``) or its fields by name.

        >>> from lsr.retrievers.sparse import BM25Retriever
        >>> BM25Retriever.from_options(k1=1.2).encoder.k1
        1.2
        """
        return cls._from_options(make_options(cls, options, fields))

    @classmethod
    def _from_options(cls, options: Any) -> "Retriever":
        raise NotImplementedError

    # -- persistence: subclasses write their files and return a JSON-able config
    @abstractmethod
    def _write(self, directory: Path) -> dict[str, Any]:
        ...

    @classmethod
    @abstractmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "Retriever":
        ...

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the retriever (encoder state and index) to a directory, atomically."""
        with atomic_directory(path, RETRIEVER_FORMAT, overwrite=overwrite) as tmp:
            config = self._write(tmp)
            write_manifest(tmp, RETRIEVER_FORMAT, RETRIEVER_FORMAT_VERSION,
                           {"retriever": self.name, "config": config})

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "Retriever":
        retriever = load_retriever(path, mmap=mmap, verify=verify)
        if not isinstance(retriever, cls):
            raise IndexFormatError(f"{path}: holds a {retriever.name!r} retriever, not {cls.name!r}")
        return retriever


def retriever_class(name: str) -> type[Retriever]:
    """The retriever class registered under ``name``."""
    try:
        target = RETRIEVERS[name]
    except KeyError:
        raise ValueError(f"unknown retriever {name!r}; choose from {', '.join(sorted(RETRIEVERS))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_retriever(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Retriever:
    """Open any saved retriever directory (the manifest says which kind)."""
    path = resolve_dir(path)  # once: a save swapping in a new version meanwhile cannot mix two
    manifest = read_manifest(path, RETRIEVER_FORMAT, RETRIEVER_FORMAT_VERSION, verify=verify)
    name = manifest.get("retriever")
    if not isinstance(name, str) or name not in RETRIEVERS:
        raise IndexFormatError(f"{path}: unknown retriever kind {name!r:.60}")
    return retriever_class(name)._read(path, field_dict(manifest, "config", path / "manifest.json"), mmap)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable ({exc})") from exc


def make_options(cls: type, options: Any, fields: dict[str, Any]) -> Any:
    """``cls.options_class`` from a dataclass instance and/or field values; unknown fields are
    refused naming the retriever and the fields it has."""
    import dataclasses

    oc = cls.options_class
    if options is not None and not isinstance(options, oc):
        raise TypeError(f"{cls.__name__} takes {oc.__name__}, not {type(options).__name__}")
    names = {f.name for f in dataclasses.fields(oc)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an option of the {cls.name} retriever "
                         f"(it has {', '.join(sorted(names))})")
    return dataclasses.replace(options, **fields) if options is not None else oc(**fields)
