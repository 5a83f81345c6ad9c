"""A live collection: documents with text and metadata, searchable while it changes.

>>> import tempfile, lsr
>>> with tempfile.TemporaryDirectory() as d, lsr.Collection.create(d + "/c", "bm25") as col:
...     col.add([{"_id": "a", "text": "heart disease"}, {"_id": "b", "text": "stock market",
...              "metadata": {"lang": "en"}}])
...     col.search("market", k=1, fields=["metadata"]).documents(0)  # doctest: +ELLIPSIS
2
[{'_id': 'b', 'score': ..., 'rank': 1, 'metadata': {'lang': 'en'}}]

Each :meth:`add`, :meth:`upsert`, :meth:`delete` (and each merge) is one atomic commit
(``commit_<generation>.json``); one writer at a time (``write.lock``), any number of readers
(threads sharing the object or ``Collection.open(path, readonly=True)`` elsewhere). Layout,
guarantees and the merge policy: docs/collections.md.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lsr.collection.commit import (TEMP_MARK, Commit, SegmentEntry, commit_generations, commit_name, crash_point,
                                   fsync_path, fsync_tree, read_commit, write_atomic, write_commit)
from lsr.collection.docstore import check_documents, contents, row_dict
from lsr.collection.leftovers import remove_stale_siblings
from lsr.collection.lock import LOCK_NAME, WriteLock
from lsr.collection.merge_policy import TieredMergePolicy
from lsr.collection.segments import build_segment, load_live, merge_into_segment, open_segment, segment_name, \
    write_deletes
from lsr.collection.snapshot import MaskCache, Snapshot
from lsr.errors import IndexFormatError
from lsr.types import SearchResults

logger = logging.getLogger(__name__)

__all__ = ["Collection", "FORMAT", "VERSION"]

FORMAT, VERSION = "lsr.collection", 1
FIELDS = ("title", "text", "metadata")
_DEFAULT = object()
_OPEN_RETRIES = 5


def _options_for(retriever: Any, fields: dict[str, Any]) -> tuple[str, Any]:
    from lsr.retrievers.options import OPTIONS

    if isinstance(retriever, str):
        if retriever not in OPTIONS:
            raise ValueError(f"unknown retriever {retriever!r}; choose from {', '.join(sorted(OPTIONS))}")
        return retriever, OPTIONS[retriever](**fields)
    name = next((n for n, cls in OPTIONS.items() if type(retriever) is cls), None)
    if name is None:
        raise TypeError(f"retriever must be a name or an options dataclass, got {type(retriever).__name__}")
    return name, dataclasses.replace(retriever, **fields) if fields else retriever


def _id_list(ids: Iterable[str], what: str) -> list[str]:
    """Document ids as a list, each a string (no str() of other values: None would name 'None')."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{what} takes a list of ids, not one {type(ids).__name__}")
    out = list(ids)
    for i, doc_id in enumerate(out):
        if not isinstance(doc_id, str):
            raise TypeError(f"{what}: id {i} is a {type(doc_id).__name__} ({doc_id!r}), not a string")
    return out


class Collection:
    """Use :meth:`create` or :meth:`open`; close it (or use ``with``) to release the write lock."""

    def __init__(self, path: Path, name: str, options: Any, engine: Any, readonly: bool,
                 merge_policy: TieredMergePolicy | None, verify: bool, lock: WriteLock | None = None) -> None:
        self.path, self.retriever, self.options, self.engine = path, name, options, engine
        self.readonly, self.merge_policy, self.verify = readonly, merge_policy, verify
        self._lock: WriteLock | None = None if readonly else lock or WriteLock(path)
        self._write = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time: snapshots never go back
        self._masks = MaskCache()
        self._open_segments: dict[str, Any] = {}
        self._closed = False
        try:
            if not readonly:
                self._clean(read_commit(path, commit_generations(path)[0]))
                remove_stale_siblings(path)
            self._snapshot = self._load_latest()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike, retriever: Any = "bm25", *, merge_policy: Any = _DEFAULT,
               **options: Any) -> "Collection":
        """A new, empty collection at ``path`` (which must not exist, or be an empty directory).

        ``retriever``: a name of :data:`lsr.retrievers.base.RETRIEVERS` (``options`` its typed options,
        :mod:`lsr.retrievers.options`) or an options dataclass. ``merge_policy``: a
        :class:`TieredMergePolicy` (the default one when not given) or None (no merges)."""
        from lsr import __version__
        from lsr.collection.engines import engine_class

        path = Path(path)
        name, opts = _options_for(retriever, options)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"{path} already exists (a collection is created in a new or empty directory)")
        engine = engine_class(name).create(opts)
        opts = engine.options  # as the engine settled them (e.g. a length the model declared)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        lock = None
        try:
            lock = WriteLock(tmp)  # held from here on: no writer's cleanup takes this for a leftover
            for sub in ("engine", "segments", "deletes"):
                (tmp / sub).mkdir()
            engine.save(tmp / "engine")
            manifest = {"format": FORMAT, "format_version": VERSION, "retriever": name, "options": opts.to_dict(),
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lsr_version": __version__}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            write_commit(tmp, Commit(0, (), 0))
            fsync_tree(tmp)
            crash_point("create-staged")
            if path.is_dir():
                path.rmdir()
            os.rename(tmp, path)  # the collection appears complete or not at all
            lock.moved_to(path)
            fsync_path(path.parent, directory=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if lock is not None:
                lock.release()
            raise
        policy = TieredMergePolicy() if merge_policy is _DEFAULT else merge_policy
        return cls(path, name, opts, engine, False, policy, True, lock)

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False, *, merge_policy: Any = _DEFAULT,
             verify: bool = True) -> "Collection":
        """Open an existing collection (a writer takes ``write.lock``; ``readonly`` takes none).
        ``verify``: check every segment file's SHA-256 when it is first opened."""
        from lsr.collection.engines import ENGINES, engine_class
        from lsr.retrievers.options import OPTIONS

        path = Path(path)
        mpath = path / "manifest.json"
        if not path.is_dir() or not mpath.is_file():
            raise IndexFormatError(f"{path}: not an lsr collection (no manifest.json)")
        for sub in ("manifest.json", "engine", "segments", "deletes"):
            if (path / sub).is_symlink():
                raise IndexFormatError(f"{path / sub}: a symbolic link (refused: collection files stay inside it)")
        try:
            m = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{mpath}: unreadable manifest ({exc})") from exc
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise IndexFormatError(f"{mpath}: not an {FORMAT} manifest")
        if m.get("format_version") != VERSION:
            raise IndexFormatError(f"{mpath}: format version {m.get('format_version')!r} is not supported")
        name = m.get("retriever")
        if name not in ENGINES or name not in OPTIONS or not isinstance(m.get("options"), dict):
            raise IndexFormatError(f"{mpath}: field 'retriever' {name!r} is no known engine (or 'options' missing)")
        try:
            opts = OPTIONS[name](**m["options"])
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{mpath}: field 'options': {exc}") from exc
        if not commit_generations(path):
            raise IndexFormatError(f"{path}: no commit file (commit_<generation>.json)")
        engine = engine_class(name).load(path / "engine", opts)
        policy = TieredMergePolicy() if merge_policy is _DEFAULT else merge_policy
        return cls(path, name, opts, engine, readonly, policy, verify)

    # ------------------------------------------------------------------ snapshots
    def _build_snapshot(self, commit: Commit, verify: bool) -> Snapshot:
        segments, lives = [], []
        for entry in commit.segments:
            seg = self._open_segments.get(entry.name)
            if seg is None or seg.manifest_sha256 != entry.manifest_sha256:  # same name, other content
                seg = open_segment(self.path, entry, self.engine, verify=verify)
            segments.append(seg)
            lives.append(load_live(self.path, entry))
        self._open_segments = {s.name: s for s in segments}  # older snapshots keep their own references
        return Snapshot(commit, tuple(segments), tuple(lives))

    def _load_latest(self) -> Snapshot:
        """The newest commit's snapshot. A reader may race a writer that removes the files of
        commits two behind: it then retries with the newer commit."""
        for attempt in range(_OPEN_RETRIES):
            generation = commit_generations(self.path)[0]
            try:
                return self._build_snapshot(read_commit(self.path, generation), self.verify)
            except (IndexFormatError, OSError):
                newer = commit_generations(self.path)
                if not self.readonly or attempt == _OPEN_RETRIES - 1 or not newer or newer[0] == generation:
                    raise
        raise AssertionError("unreachable")

    @property
    def snapshot(self) -> Snapshot:
        """The committed state searches read now (immutable)."""
        return self._snapshot

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    def refresh(self) -> bool:
        """See the newest commit (a reader; a writer always does). True when it changed.

        Refreshes are serialised, so one that loaded an older commit never replaces the newer
        snapshot another thread installed. A writer's refresh does nothing: it holds
        ``write.lock``, so its own snapshot is the newest commit, and reloading one it is just
        writing could set it back a generation (its next commit would then replace a newer one)."""
        self._check_open()
        if not self.readonly:
            return False
        with self._refreshing:
            generations = commit_generations(self.path)
            if generations and generations[0] != self._snapshot.generation:
                self._snapshot = self._load_latest()
                return True
        return False

    def __len__(self) -> int:
        return self._snapshot.n_live

    # ------------------------------------------------------------------ writing
    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the collection is closed")
        if write and self.readonly:
            raise ValueError(f"{self.path}: opened readonly; open it without readonly=True to change it")
        if write and self._lock is not None:
            self._lock.check()

    def add(self, docs: Iterable[Mapping[str, Any]], show_progress: bool = False,
            batch_size: int | None = None, vectors: Any = None) -> int:
        """Add new documents (``{_id, title?, text, metadata?}``) in one commit; an id already in
        the collection is refused (use :meth:`upsert` to replace). Returns how many were added.

        ``batch_size``: read and encode ``docs`` (any iterable, a generator over a file for
        instance) that many at a time, each batch written as its own segment, all committed at
        the end in one commit: memory stays bounded by the batch, and when the iterable or a
        document fails nothing is committed (the segments written so far are removed). None (the
        default): all documents at once, one segment.

        ``vectors``: the documents' vectors computed beforehand
        (:class:`lsr.collection.encoded.EncodedDocuments`, for instance ``lsr encode`` shards;
        for a hybrid a list with one per component, None where the component encodes), indexed
        instead of encoding the documents; every document must have one, and vectors made by
        another encoder than this collection's are refused."""
        return self._add(docs, replace=False, show_progress=show_progress, batch_size=batch_size, vectors=vectors)

    def upsert(self, docs: Iterable[Mapping[str, Any]], show_progress: bool = False,
               batch_size: int | None = None, vectors: Any = None) -> int:
        """Add documents, replacing live ones with the same ids: delete and add in ONE commit
        (``batch_size`` and ``vectors`` as for :meth:`add`)."""
        return self._add(docs, replace=True, show_progress=show_progress, batch_size=batch_size, vectors=vectors)

    def _add(self, docs: Iterable[Mapping[str, Any]], replace: bool, show_progress: bool,
             batch_size: int | None, vectors: Any = None) -> int:
        self._check_open(write=True)
        if vectors is not None:
            self.engine.check_encoded(vectors)
        if batch_size is None:
            parts: Iterable[list[Any]] = [check_documents(docs)]  # checked before anything is written
        else:
            from lsr.io.manifest import positive_int

            size = positive_int(batch_size, "batch_size")
            it = iter(docs)
            parts = iter(lambda: list(itertools.islice(it, size)), [])
        with self._write:
            snap = self._snapshot
            number = snap.commit.next_segment
            written: list[SegmentEntry] = []
            replaced: list[tuple[int, int]] = []
            seen: dict[str, int] = {}
            try:
                for part in parts:
                    batch = part if batch_size is None else check_documents(part, len(seen), seen)
                    if not batch:
                        continue
                    found = [(d["_id"], snap.locate(d["_id"])) for d in batch]
                    live = [(i, hit) for i, hit in found if hit is not None]
                    if live and not replace:
                        shown = ", ".join(repr(i) for i, _ in live[:5]) + (" ..." if len(live) > 5 else "")
                        raise ValueError(f"{len(live)} id(s) already in the collection: {shown} (use upsert to "
                                         f"replace)")
                    replaced += [hit for _, hit in live]
                    encoded = None if vectors is None else self.engine.take_encoded(vectors, [d["_id"] for d in batch])
                    written.append(build_segment(self.path, segment_name(number), batch, contents(batch),
                                                 self.engine, show_progress, encoded))
                    number += 1
            except BaseException:  # nothing was committed: the segments written so far go (a kill
                for entry in written:  # leaves them to the next writer's open, named by no commit)
                    shutil.rmtree(self.path / "segments" / entry.name, ignore_errors=True)
                raise
            if not written:
                return 0
            self._commit(self._with_deletes(snap, replaced) + written, number)
            self._maybe_merge()
        return sum(e.n_docs for e in written)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id in one commit; returns how many were live (unknown ids are ignored)."""
        self._check_open(write=True)
        ids = _id_list(ids, "delete")
        with self._write:
            snap = self._snapshot
            hits = {snap.locate(i) for i in ids} - {None}
            if not hits:
                return 0
            self._commit(self._with_deletes(snap, list(hits)), snap.commit.next_segment)
            self._maybe_merge()
        return len(hits)

    def _with_deletes(self, snap: Snapshot, hits: list[tuple[int, int]]) -> list[SegmentEntry]:
        """The snapshot's segment entries with ``hits`` (ordinal, position) tombstoned for the next
        generation (new tombstone files; fully deleted segments dropped)."""
        generation = snap.generation + 1
        by_segment: dict[int, list[int]] = {}
        for ordinal, pos in hits:
            by_segment.setdefault(ordinal, []).append(pos)
        entries = []
        for ordinal, entry in enumerate(snap.commit.segments):
            if ordinal not in by_segment:
                entries.append(entry)
                continue
            live = snap.lives[ordinal]
            live = np.ones(entry.n_docs, bool) if live is None else live.copy()
            live[by_segment[ordinal]] = False
            deleted = np.flatnonzero(~live)
            if deleted.size == entry.n_docs:
                continue
            rel, digest = write_deletes(self.path, entry.name, generation, deleted)
            entries.append(dataclasses.replace(entry, deletes=rel, deletes_sha256=digest,
                                               n_deleted=int(deleted.size)))
        if hits:
            crash_point("deletes-written")
        return entries

    def _commit(self, entries: list[SegmentEntry], next_segment: int) -> None:
        commit = Commit(self._snapshot.generation + 1, tuple(entries), next_segment)
        if self._lock is not None:
            self._lock.check()  # the directory is still the one this writer opened
        write_commit(self.path, commit)
        crash_point("committed")
        self._snapshot = self._build_snapshot(commit, verify=False)  # our own files, just written
        self._clean(commit)

    def _clean(self, commit: Commit) -> None:
        """Remove what neither this commit nor the one before names: older commits, merged-away
        segments and tombstones, and leftovers of interrupted writes (temporary names)."""
        keep = commit.files()
        older = [g for g in commit_generations(self.path) if g < commit.generation]
        if older:
            try:
                keep |= read_commit(self.path, older[0]).files()
            except IndexFormatError:
                logger.warning("%s: unreadable older commit %s removed", self.path, commit_name(older[0]))
        removed = 0
        for sub in ("", "segments", "deletes"):
            folder = self.path / sub if sub else self.path
            for entry in sorted(os.listdir(folder)):
                rel = f"{sub}/{entry}" if sub else entry
                is_commit = entry.startswith("commit_")
                ours = TEMP_MARK in entry or is_commit or sub
                if not ours or rel in keep or (not sub and entry in ("segments", "deletes")):
                    continue
                full = folder / entry
                if full.is_dir() and not full.is_symlink():
                    shutil.rmtree(full)
                else:
                    full.unlink()
                removed += 1
                if removed == 1:
                    crash_point("cleaning")
        if removed:
            logger.info("%s: removed %d unreferenced file(s)", self.path, removed)

    # ------------------------------------------------------------------ merging
    def _maybe_merge(self) -> None:
        for _ in range(64):  # a merge may fill the next tier: cascade
            if self.merge_policy is None:
                return
            sizes = [(e.n_docs - e.n_deleted, e.n_deleted) for e in self._snapshot.commit.segments]
            ranges = self.merge_policy.find_merges(sizes)
            if not ranges:
                return
            self._merge(ranges)

    def _merge(self, ranges: Sequence[tuple[int, int]]) -> None:
        snap = self._snapshot
        number = snap.commit.next_segment
        merged: dict[int, SegmentEntry] = {}
        for start, end in ranges:
            inputs = [(snap.segments[j], snap.lives[j] if snap.lives[j] is not None
                       else np.ones(snap.segments[j].n_docs, bool)) for j in range(start, end)]
            merged[start] = merge_into_segment(self.path, segment_name(number), inputs, self.engine)
            number += 1
        entries, j = [], 0
        segs = snap.commit.segments
        bounds = dict(ranges)
        while j < len(segs):
            if j in bounds:
                entries.append(merged[j])
                j = bounds[j]
            else:
                entries.append(segs[j])
                j += 1
        self._commit(entries, number)

    def optimize(self) -> None:
        """Merge every segment into one (tombstoned documents dropped), in one commit."""
        self._check_open(write=True)
        with self._write:
            segs = self._snapshot.commit.segments
            if len(segs) > 1 or any(e.n_deleted for e in segs):
                self._merge([(0, len(segs))])

    # ------------------------------------------------------------------ reading
    def get(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The live documents ``{_id, title, text, metadata}`` with these ids, in order; None for
        an id that is not in the collection."""
        self._check_open()
        ids = _id_list(ids, "get")
        snap = self._snapshot
        out: list[dict[str, Any] | None] = []
        for doc_id in ids:
            hit = snap.locate(doc_id)
            out.append(None if hit is None else row_dict(snap.segments[hit[0]].table, hit[1]))
        return out

    def ids(self) -> list[str]:
        """Live document ids in collection order (segment order, then position)."""
        return self._snapshot.live_ids()

    def search(self, queries: str | Sequence[str], k: int = 10, filter: Any = None,
               fields: Sequence[str] | None = None, threads: int = 1, **search_options: Any) -> SearchResults:
        """Top ``k`` live documents per query, among those ``filter`` allows (a filter of
        :func:`lsr.collection.filters.compile_filter`, applied before the top-k); ``fields``
        (``"title"``, ``"text"``, ``"metadata"``) are returned in ``SearchResults.fields``."""
        from lsr.io.manifest import positive_int
        from lsr.retrievers.base import as_queries

        self._check_open()
        snap = self._snapshot  # one commit for the whole search
        queries, k = as_queries(queries), positive_int(k, "k")
        fields = list(fields or [])
        bad = [f for f in fields if f not in FIELDS]
        if bad or isinstance(fields, str):
            raise ValueError(f"fields must be among {', '.join(FIELDS)}, got {bad or fields!r}")
        allowed = self._allowed(snap, filter)
        k = min(k, snap.n_live)  # k beyond the live documents is capped, not allocated (as retrievers do)
        if not snap.segments or k == 0:
            seg = pos = np.full((len(queries), k), -1, np.int64)
            scores = np.zeros((len(queries), k), np.float32)
        else:
            seg, pos, scores = self.engine.search(queries, k, list(zip((s.part for s in snap.segments), snap.lives)),
                                                  allowed=allowed, threads=threads, **search_options)
        seg, pos = np.asarray(seg, np.int64), np.asarray(pos, np.int64)
        valid = pos >= 0
        ids = np.full(pos.shape, -1, np.int64)
        ids[valid] = np.arange(int(valid.sum()))
        hits = list(zip(seg[valid].tolist(), pos[valid].tolist()))
        doc_ids = [str(snap.segments[g].ids[p]) for g, p in hits]
        out_fields = None
        if fields:
            rows = [row_dict(snap.segments[g].table, p, fields) for g, p in hits]
            out_fields = {f: [r[f] for r in rows] for f in fields}
        return SearchResults(ids, np.asarray(scores, np.float32), doc_ids, fields=out_fields)

    def _allowed(self, snap: Snapshot, filter: Any) -> list[np.ndarray | None] | None:
        if filter is None:
            return None
        from lsr.collection.filters import compile_filter

        compiled = compile_filter(filter, schema=snap.schema() if snap.segments else None)
        if compiled.matches_all:
            return None
        return [self._masks.get(seg, compiled) for seg in snap.segments]

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Release the write lock (idempotent); the collection cannot be used afterwards."""
        self._closed = True
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        return (f"Collection({str(self.path)!r}, {self.retriever}, {len(self)} documents, "
                f"{len(self._snapshot.segments)} segments, generation {self.generation}, {mode})")
