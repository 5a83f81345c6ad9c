"""Retrievers pair an encoder with an index: text in, ranked documents out.

Every retriever answers ``search(queries, k)`` with :class:`SearchResults` and persists to one
directory (``manifest.json`` naming the retriever, its configuration and files). The registry
maps the names the CLI's ``--retriever`` accepts to classes, imported lazily so that heavy
dependencies (torch, faiss) load only when used.

>>> from lsr.hybrid.sparse import BM25Retriever
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from lsr.index._format import IndexFormatError, atomic_directory, read_manifest, write_manifest

__all__ = ["SearchResults", "Retriever", "RETRIEVERS", "retriever_class", "load_retriever"]

RETRIEVER_FORMAT = "lsr.retriever"
RETRIEVER_FORMAT_VERSION = 1

# name -> "module:Class". Add a line here to make a retriever available to the CLI.
RETRIEVERS: dict[str, str] = {
    "bm25": "lsr.hybrid.sparse:BM25Retriever",
    "splade": "lsr.hybrid.sparse:SpladeRetriever",
    "inference-free": "lsr.hybrid.sparse:InferenceFreeRetriever",
    "dense": "lsr.hybrid.dense:DenseRetriever",
    "maxsim": "lsr.hybrid.dense:MaxSimRetriever",
    "muvera": "lsr.hybrid.dense:MuveraRetriever",
    "hybrid": "lsr.hybrid.hybrid:HybridRetriever",
}


@dataclass
class SearchResults:
    """Top-k results of a batch of queries.

    Attributes:
        ids: ``int64`` document positions, shape ``(nq, k)``, ``-1`` where fewer than k matched.
        scores: ``float32`` scores, shape ``(nq, k)``, best first.
        doc_ids: external document ids indexed by position (``doc_ids[ids[i, j]]``).
    """

    ids: np.ndarray
    scores: np.ndarray
    doc_ids: np.ndarray

    def __len__(self) -> int:
        return self.ids.shape[0]

    def hits(self, i: int) -> list[tuple[str, float]]:
        """Query ``i``'s results as ``(doc_id, score)`` pairs, padding dropped."""
        keep = self.ids[i] >= 0
        return [(str(self.doc_ids[d]), float(s)) for d, s in zip(self.ids[i][keep], self.scores[i][keep])]

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """A run ``{qid: {doc_id: score}}`` for :func:`lsr.evaluate` and :func:`lsr.write_run`."""
        if len(query_ids) != len(self):
            raise ValueError(f"{len(query_ids)} query ids for {len(self)} result rows")
        return {str(q): dict(self.hits(i)) for i, q in enumerate(query_ids)}


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

    @classmethod
    def from_options(cls, **options: Any) -> "Retriever":
        """Build from CLI options (``model``, ``idf``, ``doc_max_length``, ...); ignore the rest."""
        return cls()

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
    path = Path(path)
    manifest = read_manifest(path, RETRIEVER_FORMAT, RETRIEVER_FORMAT_VERSION, verify=verify)
    name = manifest.get("retriever")
    if name not in RETRIEVERS:
        raise IndexFormatError(f"{path}: unknown retriever kind {name!r}")
    return retriever_class(name)._read(path, manifest.get("config") or {}, mmap)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable ({exc})") from exc
