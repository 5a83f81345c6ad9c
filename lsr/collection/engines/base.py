"""The Engine interface: how one retriever kind encodes, stores, opens, merges and searches segments.

A collection (``lsr.collection``) holds immutable segments; for each segment an engine writes its
own files (``segments/seg_N/engine/``) and opens them as a :class:`SegmentPart`. A search runs over
a *snapshot*: the segments of one commit, each with its live mask (deletes) and optionally an
``allowed`` mask (a filter). Results are ``(segment ordinal, position, score)`` arrays of shape
``(nq, k)``, best first, ties by ``(segment ordinal, position)``, padded with ``-1 / -1 / 0.0``:
the collection's document order is segment order then position, so a fresh build over the
surviving documents in that order ranks them the same way (docs/collections.md, "Scores").

The interface is shared with the storage side (notes in docs/collections.md); keep it as is.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from lsr.errors import IndexFormatError

__all__ = ["SegmentPart", "Engine", "ENGINES", "engine_class", "Hits", "merge_hits", "top_k_rows",
           "combined_mask", "mask_digest", "empty_hits"]

#: (segment ordinals, positions, scores), each ``(nq, k)``
Hits = tuple[np.ndarray, np.ndarray, np.ndarray]

ENGINE_FILE = "engine.json"


class SegmentPart(Protocol):
    """What :meth:`Engine.open_segment` returns (engine-specific); ``n_docs`` rows."""

    n_docs: int


class Engine(ABC):
    """One retriever kind's side of a collection. The storage layer calls only these methods."""

    name: ClassVar[str]
    #: the options dataclass of :mod:`lsr.retrievers.options` this engine is built from
    options_class: ClassVar[type]

    def __init__(self, options: Any) -> None:
        if not isinstance(options, self.options_class):
            raise TypeError(f"the {self.name} engine takes {self.options_class.__name__}, not "
                            f"{type(options).__name__}")
        self.options = options

    @classmethod
    def create(cls, options: Any) -> "Engine":
        """An engine for a new collection with these options (builds the encoder)."""
        return cls(options)

    def save(self, directory: Path) -> None:
        """Collection-level state into an existing empty directory (``COLLECTION/engine``)."""
        (Path(directory) / ENGINE_FILE).write_text(json.dumps(
            {"engine": self.name, "options": self.options.to_dict(), **self.state()}, indent=2) + "\n")

    def state(self) -> dict[str, Any]:
        """What :meth:`save` records besides the options (an encoder's settings); checked on load."""
        return {}

    @classmethod
    def load(cls, directory: Path, options: Any) -> "Engine":
        """The engine of an existing collection: built from ``options``, checked against what
        :meth:`save` recorded (an encoder that would encode documents differently is refused)."""
        engine = cls.create(options)
        engine.check_saved(directory)
        return engine

    def check_saved(self, directory: Path) -> None:
        """:class:`IndexFormatError` unless ``directory`` holds this engine's saved state."""
        path = Path(directory) / ENGINE_FILE
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path}: unreadable engine state ({exc})") from exc
        found = saved.get("engine") if isinstance(saved, dict) else None
        if found != self.name:
            raise IndexFormatError(f"{path}: field 'engine' is {found!r}, expected {self.name!r}")
        for key, value in self.state().items():
            if key in saved and _jsonable(saved[key]) != _jsonable(value):
                raise IndexFormatError(f"{path}: field {key!r} is {saved[key]!r}, but these options give "
                                       f"{value!r} (documents were encoded differently)")

    @abstractmethod
    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        """Encode ``texts`` and write this engine's files for a new segment into ``directory``
        (exists, empty); segment position ``i`` is ``texts[i]``."""

    def query_vectors(self, queries: Sequence[str]) -> Any:
        """The queries as this engine's search encodes them, to pass back as the search option
        ``query_vectors=`` (a sharded search encodes each batch once, at the driver, so every shard
        scores the same query vectors); None for engines that search the text itself (BM25)."""
        return None

    # ------------------------------------------------------------ pre-encoded documents
    def check_encoded(self, vectors: Any) -> None:
        """``ValueError`` unless ``vectors`` (an :class:`lsr.collection.encoded.EncodedDocuments`,
        or for a hybrid one per component) are vectors this engine would have computed: same kind,
        width and, when recorded, the same encoder settings. Engines without model vectors refuse."""
        raise ValueError(f"a {self.name} collection computes its documents' representation itself "
                         f"(pre-encoded vectors are for model-based retrievers)")

    def take_encoded(self, vectors: Any, ids: Sequence[str]) -> Any:
        """The rows of ``vectors`` for ``ids``, in order (what :meth:`write_encoded` takes)."""
        return vectors.take(ids)

    def write_encoded(self, encoded: Any, texts: Sequence[str], directory: Path) -> None:
        """As :meth:`write_segment`, from the documents' vectors (:meth:`take_encoded`) instead of
        encoding ``texts`` (row ``i`` is ``texts[i]``'s; the texts only mark blank documents)."""
        raise ValueError(f"a {self.name} collection takes no pre-encoded vectors")

    @abstractmethod
    def merge_segments(self, parts: Sequence[tuple[Any, np.ndarray]], directory: Path) -> None:
        """Write into ``directory`` one segment holding, in order, the documents of each part whose
        mask is True, from the stored vectors (no re-encoding)."""

    @abstractmethod
    def open_segment(self, directory: Path, n_docs: int) -> Any:
        """The segment's files, memory-mapped and checked (:class:`IndexFormatError` when damaged)."""

    @abstractmethod
    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[Any, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1,
               **search_options: Any) -> Hits:
        """Top-``k`` over the live and allowed documents of the snapshot ``segments``."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# name -> "module:Class", as lsr.retrievers.base.RETRIEVERS
ENGINES: dict[str, str] = {
    "bm25": "lsr.collection.engines.bm25:BM25Engine",
    "splade": "lsr.collection.engines.sparse:SpladeEngine",
    "inference-free": "lsr.collection.engines.sparse:InferenceFreeEngine",
    "dense": "lsr.collection.engines.dense:DenseEngine",
    "maxsim": "lsr.collection.engines.multivector:MaxSimEngine",
    "muvera": "lsr.collection.engines.multivector:MuveraEngine",
    "hybrid": "lsr.collection.engines.hybrid:HybridEngine",
}


def engine_class(name: str) -> type[Engine]:
    """The engine registered under ``name``."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose from {', '.join(sorted(ENGINES))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# ---------------------------------------------------------------------------- shared helpers
def check_search(queries: Sequence[str], k: int, segments: Sequence[tuple[Any, Any]],
                 allowed: Sequence[np.ndarray | None] | None, search_options: dict[str, Any],
                 engine: str) -> tuple[list[str], int, list[np.ndarray | None]]:
    """Validated ``(queries, k, per-segment masks)``: a mask is live AND allowed (None = all)."""
    from lsr.io.manifest import positive_int
    from lsr.retrievers.base import as_queries

    if search_options:
        raise TypeError(f"{', '.join(sorted(search_options))}: not a search option of the {engine} engine")
    queries = as_queries(queries)
    k = positive_int(k, "k")
    if allowed is not None and len(allowed) != len(segments):
        raise ValueError(f"{len(allowed)} allowed masks for {len(segments)} segments")
    masks = [combined_mask(part.n_docs, live, None if allowed is None else allowed[i])
             for i, (part, live) in enumerate(segments)]
    return queries, k, masks


def given_query_vectors(search_options: dict[str, Any], n_queries: int, rows: Any) -> Any:
    """Pop the ``query_vectors`` search option (None when absent), checked to have a row per query
    (``rows(vectors)`` counts them)."""
    vectors = search_options.pop("query_vectors", None)
    if vectors is not None and rows(vectors) != n_queries:
        raise ValueError(f"query_vectors: {rows(vectors)} rows for {n_queries} queries")
    return vectors


def combined_mask(n_docs: int, live: np.ndarray | None, allowed: np.ndarray | None) -> np.ndarray | None:
    """``live & allowed`` as one bool array of ``n_docs`` (None when both are None: all documents)."""
    out = None
    for name, m in (("live", live), ("allowed", allowed)):
        if m is None:
            continue
        m = np.asarray(m)
        if m.dtype != bool or m.shape != (n_docs,):
            raise ValueError(f"the {name} mask must be a bool array of {n_docs}, got {m.dtype} {m.shape}")
        out = m if out is None else out & m
    return out


def mask_digest(mask: np.ndarray | None) -> bytes:
    """A short digest of a mask (the cache key of statistics that depend on the live documents)."""
    if mask is None:
        return b"all"
    return hashlib.blake2b(np.packbits(mask).tobytes() + str(mask.size).encode(), digest_size=16).digest()


def top_k_rows(scores: np.ndarray, valid: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` ``(nq, n)``, the best ``k`` valid entries (``valid``: ``(n,)`` or
    ``(nq, n)`` bool, None = all), best first, ties to the lower position; padded with -1 / 0.

    Exact: a row's k-th best score is found with a partition, every entry at or above it is
    sorted by (score desc, position)."""
    scores = np.asarray(scores, dtype=np.float32)
    nq, n = scores.shape
    ids = np.full((nq, k), -1, np.int64)
    out = np.zeros((nq, k), np.float32)
    for r in range(nq):
        s = scores[r]
        v = np.isfinite(s) if valid is None else (valid if valid.ndim == 1 else valid[r]) & np.isfinite(s)
        cand = np.flatnonzero(v)
        if cand.size == 0:
            continue
        cs = s[cand]
        if cand.size > k:
            kth = np.partition(cs, cand.size - k)[cand.size - k]
            keep = cs >= kth
            cand, cs = cand[keep], cs[keep]
        order = np.lexsort((cand, -cs))[:k]
        ids[r, :order.size] = cand[order]
        out[r, :order.size] = cs[order]
    return ids, out


def empty_hits(nq: int, k: int) -> Hits:
    return np.full((nq, k), -1, np.int64), np.full((nq, k), -1, np.int64), np.zeros((nq, k), np.float32)


def merge_hits(per_segment: Sequence[tuple[np.ndarray, np.ndarray]], nq: int, k: int) -> Hits:
    """Each segment's ``(positions, scores)`` (``(nq, k_s)``, -1 = none) merged into the top ``k``
    by (score desc, segment ordinal, position)."""
    seg_out, pos_out, score_out = empty_hits(nq, k)
    if not per_segment:
        return seg_out, pos_out, score_out
    pos = np.concatenate([np.asarray(p, np.int64) for p, _ in per_segment], axis=1)
    sc = np.concatenate([np.asarray(s, np.float32) for _, s in per_segment], axis=1)
    seg = np.concatenate([np.full(np.shape(p), i, np.int64) for i, (p, _) in enumerate(per_segment)], axis=1)
    for r in range(nq):
        valid = pos[r] >= 0
        p, s, g = pos[r][valid], sc[r][valid], seg[r][valid]
        order = np.lexsort((p, g, -s))[:k]
        seg_out[r, :order.size], pos_out[r, :order.size], score_out[r, :order.size] = g[order], p[order], s[order]
    return seg_out, pos_out, score_out


def parts_mask(parts: Sequence[tuple[Any, np.ndarray]]) -> list[np.ndarray]:
    """Each merge input's keep-mask, checked (bool, one entry per document of its part)."""
    out = []
    for part, keep in parts:
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (part.n_docs,):
            raise ValueError(f"a merge mask must be a bool array of {part.n_docs}, got {keep.dtype} {keep.shape}")
        out.append(keep)
    return out


def check_n_docs(directory: Path, found: int, expected: int) -> None:
    if found != expected:
        raise IndexFormatError(f"{directory}: holds {found} documents, the commit says {expected}")
