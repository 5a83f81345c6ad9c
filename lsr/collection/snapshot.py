"""What a search reads: one committed state, immutable, swapped by reference.

A :class:`Snapshot` holds the open segments of one commit (engine parts, stored documents), their
live masks and, lazily, the filter schema; :meth:`Collection.search` reads the collection's
current snapshot once, so a search sees one commit from start to end while a writer commits the
next. Filter masks are cached per segment (segments are immutable, so a mask outlives snapshots).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsr.collection.commit import Commit
from lsr.collection.segments import OpenSegment

__all__ = ["Snapshot", "MaskCache", "MASK_CACHE_BYTES"]

#: the most bytes a collection's cached filter masks hold together (a bool per document of a segment)
MASK_CACHE_BYTES = 64 << 20


@dataclass
class Snapshot:
    commit: Commit
    segments: tuple[OpenSegment, ...]
    lives: tuple[np.ndarray | None, ...]
    _schema: dict[str, str] | None = field(default=None, repr=False)

    @property
    def generation(self) -> int:
        return self.commit.generation

    @property
    def n_live(self) -> int:
        return self.commit.n_live

    def locate(self, doc_id: str) -> tuple[int, int] | None:
        """(segment ordinal, position) of the live document ``doc_id``, None when not live."""
        for ordinal, (seg, live) in enumerate(zip(self.segments, self.lives)):
            pos = seg.position(doc_id)
            if pos is not None and (live is None or live[pos]):
                return ordinal, pos
        return None

    def schema(self) -> dict[str, str]:
        if self._schema is None:
            from lsr.collection.filters import infer_schema

            self._schema = infer_schema([s.table for s in self.segments])
        return self._schema

    def live_ids(self) -> list[str]:
        """The live documents' ids in collection order."""
        out: list[str] = []
        for seg, live in zip(self.segments, self.lives):
            out.extend(seg.ids.tolist() if live is None else seg.ids[live].tolist())
        return out


class MaskCache:
    """Filter masks per (segment name, manifest SHA-256, canonical filter JSON), least recently
    used dropped while the masks together hold more than ``max_bytes`` (one byte per document of
    a segment: a count bound would let 64 masks of a 10M-document segment take 640 MB). A mask
    larger than the whole bound is returned without being cached."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._items: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self.max_bytes = MASK_CACHE_BYTES if max_bytes is None else int(max_bytes)
        self.nbytes = 0  # of the cached masks
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, seg: OpenSegment, compiled: Any) -> np.ndarray:
        key = (seg.name, seg.manifest_sha256, compiled.to_json())
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        mask = np.asarray(compiled.mask(seg.table), dtype=bool)
        mask.setflags(write=False)
        if mask.nbytes > self.max_bytes:
            return mask
        with self._lock:
            old = self._items.pop(key, None)  # another thread computed it meanwhile
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = mask
            self.nbytes += mask.nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes
        return mask
