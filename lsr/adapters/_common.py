"""What the three framework adapters share: importing the framework with an install hint, opening a
collection given by path, one query's hits with their stored fields."""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Mapping

__all__ = ["require", "open_collection", "collection_path", "search_hits", "hit_metadata", "check_k"]

FIELDS = ("text", "title", "metadata")


def require(module: str, extra: str, package: str) -> ModuleType:
    """Import ``module`` or raise ImportError saying which lsr extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"lsr.adapters.{extra} needs {package}: pip install 'lsr[{extra}]' "
                          f"({exc})") from exc


def open_collection(collection: Any) -> Any:
    """A collection object as given, or the collection at a path opened read-only."""
    if isinstance(collection, (str, os.PathLike)):
        from lsr.collection.collection import Collection

        return Collection.open(collection, readonly=True)
    if not callable(getattr(collection, "search", None)):
        raise TypeError(f"collection must be an lsr Collection or the path of one, "
                        f"got {type(collection).__name__}")
    return collection


def collection_path(collection: Any) -> str:
    """The directory of an open collection (what a serialised pipeline stores)."""
    path = getattr(collection, "path", None)
    if path is None:
        raise ValueError(f"cannot serialise: {type(collection).__name__} has no path attribute")
    return os.fspath(path)


def check_k(k: Any, name: str = "k", allow_zero: bool = False) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < (0 if allow_zero else 1):
        least = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {least} integer, got {k!r}")
    return k


def search_hits(collection: Any, query: str, k: int, filter: Any = None) -> list[dict[str, Any]]:
    """One query's hits, best first: dicts with ``_id``, ``score``, ``rank``, ``text``, ``title``
    and ``metadata`` (``Collection.search(..., fields=...)``), padding dropped. A read-only
    collection is refreshed first, so each query searches the newest commit."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if k == 0:
        return []
    if getattr(collection, "readonly", False):
        collection.refresh()  # a reader sees the newest commit (a writer always sees its own)
    results = collection.search([query], k=k, filter=filter or None, fields=list(FIELDS))
    return [hit for hit in results.documents(0) if hit.get("_id") is not None]


def hit_metadata(hit: Mapping[str, Any]) -> dict[str, Any]:
    """The document's metadata (a copy), plus its title under ``"title"`` when it has one."""
    metadata = dict(hit.get("metadata") or {})
    title = hit.get("title")
    if title:
        metadata["title"] = title
    return metadata

