"""Beyond one machine, on Ray: distributed encoding into lsr's shards, sharded collections and
sharded search (see docs/scale.md).

Ray is optional (``pip install 'lsr[ray]'``): importing this package does not import it; the
functions that need it import it and name the extra when it is missing.

>>> from lsr.distributed import encode_corpus_distributed     # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "encode_corpus_distributed": "lsr.distributed.encode",
    "EncoderPool": "lsr.distributed.encode",
    "connect": "lsr.distributed.cluster",
    "disconnect": "lsr.distributed.cluster",
    "require_ray": "lsr.distributed.cluster",
    "RAY_HINT": "lsr.distributed.cluster",
    "ShardedCollection": "lsr.distributed.sharded",
    "build_sharded": "lsr.distributed.sharded",
    "shard_of": "lsr.distributed.sharded",
    "ShardedSearcher": "lsr.distributed.search",
    "ShardedSearchResults": "lsr.distributed.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lsr.distributed' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
