"""Live collections: stored documents, segments, commits, filters (see docs/collections.md).

``Collection`` and the merge policy load lazily (pyarrow and the engines import on first use)."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Collection": "lsr.collection.collection",
    "TieredMergePolicy": "lsr.collection.merge_policy",
    "Snapshot": "lsr.collection.snapshot",
    "EncodedDocuments": "lsr.collection.encoded",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lsr.collection' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
