"""Immutable segments and their tombstones.

``segments/seg_<8 digits>/`` holds ``docs.parquet``, ``engine/`` (the engine's files) and
``manifest.json`` (format ``lsr.collection.segment``: size and SHA-256 of every other file). A
segment is built under a temporary name, fsynced and renamed into place, so a directory named
``seg_N`` is complete. Deletes never touch a segment: each commit that deletes writes
``deletes/seg_N.<generation>.npy`` (the sorted positions deleted so far, int64), named with its
SHA-256 by the commit.

Opening checks what a commit names: the manifest's SHA-256 against the commit, no symbolic link
or file the manifest does not list, every listed file's size and (``verify``) SHA-256; a damaged
file is refused with :class:`IndexFormatError` naming it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.collection.commit import TEMP_MARK, SegmentEntry, crash_point, fsync_tree, sha256_file, write_atomic
from lsr.collection.docstore import merged_docs, read_docs, write_docs
from lsr.errors import IndexFormatError

__all__ = ["OpenSegment", "build_segment", "merge_into_segment", "open_segment", "write_deletes", "load_live",
           "segment_name"]

FORMAT, VERSION = "lsr.collection.segment", 1
MANIFEST = "manifest.json"


def segment_name(number: int) -> str:
    return f"seg_{number:08d}"


@dataclass
class OpenSegment:
    """A segment opened for searching: the engine's part, the stored documents and the ids."""

    name: str
    n_docs: int
    part: Any
    table: Any
    ids: np.ndarray
    #: the commit's SHA-256 of the segment manifest: what identifies its content (a name alone does
    #: not, once a collection is replaced at its path)
    manifest_sha256: str = ""
    _index: dict[str, int] | None = None

    def position(self, doc_id: str) -> int | None:
        if self._index is None:
            self._index = {d: i for i, d in enumerate(self.ids.tolist())}
        return self._index.get(doc_id)


def _finish(root: Path, tmp: Path, name: str, n_docs: int, engine_name: str, point: str) -> SegmentEntry:
    from lsr.io.manifest import write_manifest

    write_manifest(tmp, FORMAT, VERSION, {"name": name, "n_docs": n_docs, "engine": engine_name})
    crash_point(point)
    fsync_tree(tmp)
    final = root / "segments" / name
    os.rename(tmp, final)  # a directory named seg_N is complete
    from lsr.collection.commit import fsync_path

    fsync_path(final.parent, directory=True)
    crash_point("segment-synced")
    return SegmentEntry(name, n_docs, sha256_file(final / MANIFEST))


def _temp_dir(root: Path, name: str) -> Path:
    tmp = root / "segments" / f"{name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"
    (tmp / "engine").mkdir(parents=True)
    return tmp


def build_segment(root: Path, name: str, docs: Sequence[dict[str, Any]], texts: Sequence[str], engine: Any,
                  show_progress: bool = False, encoded: Any = None) -> SegmentEntry:
    """Write a new segment of ``docs`` (encoded from ``texts``, or indexing their pre-encoded
    vectors ``encoded``: ``engine.take_encoded``) as ``segments/<name>``."""
    tmp = _temp_dir(root, name)
    try:
        write_docs(tmp, docs)
        if encoded is None:
            engine.write_segment(list(texts), tmp / "engine", show_progress=show_progress)
        else:
            engine.write_encoded(encoded, list(texts), tmp / "engine")
        return _finish(root, tmp, name, len(docs), engine.name, "segment-written")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def merge_into_segment(root: Path, name: str, inputs: Sequence[tuple[OpenSegment, np.ndarray]],
                       engine: Any) -> SegmentEntry:
    """Write the live documents of ``inputs`` (segment, keep mask), in order, as one new segment,
    from the stored vectors (no re-encoding)."""
    tmp = _temp_dir(root, name)
    try:
        merged_docs([s.table for s, _ in inputs], [k for _, k in inputs], tmp)
        engine.merge_segments([(s.part, k) for s, k in inputs], tmp / "engine")
        n = int(sum(int(k.sum()) for _, k in inputs))
        return _finish(root, tmp, name, n, engine.name, "merge-written")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_tree(directory: Path, entry: SegmentEntry, verify: bool) -> None:
    mpath = directory / MANIFEST
    if not directory.is_dir() or directory.is_symlink():
        raise IndexFormatError(f"{directory}: segment directory missing (or a symbolic link)")
    try:
        raw = mpath.read_bytes()
    except OSError as exc:
        raise IndexFormatError(f"{mpath}: unreadable segment manifest ({exc})") from exc
    import hashlib

    if hashlib.sha256(raw).hexdigest() != entry.manifest_sha256:
        raise IndexFormatError(f"{mpath}: checksum differs from the commit's (edited or corrupted)")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IndexFormatError(f"{mpath}: unreadable segment manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("n_docs") != entry.n_docs:
        raise IndexFormatError(f"{mpath}: not the {FORMAT} of {entry.n_docs} documents the commit names")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IndexFormatError(f"{mpath}: field 'files' must be an object")
    present = set()
    for dirpath, dirs, names in os.walk(directory, followlinks=False):
        for n in dirs + names:
            full = Path(dirpath) / n
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise IndexFormatError(f"{full}: a symbolic link inside a segment (refused)")
            if n in names:
                present.add(full.relative_to(directory).as_posix())
    listed = set(files) | {MANIFEST}
    for rel in sorted(present - listed):
        raise IndexFormatError(f"{directory / rel}: a file the segment manifest does not list")
    for rel, meta in sorted(files.items()):
        f = directory / rel
        if rel not in present:
            raise IndexFormatError(f"{f}: missing (the segment manifest lists it)")
        if not isinstance(meta, dict) or f.stat().st_size != meta.get("bytes"):
            raise IndexFormatError(f"{f}: size differs from the segment manifest's (truncated or edited)")
        if verify and sha256_file(f) != meta.get("sha256"):
            raise IndexFormatError(f"{f}: checksum mismatch (edited or corrupted)")


def open_segment(root: Path, entry: SegmentEntry, engine: Any, verify: bool = True) -> OpenSegment:
    directory = root / "segments" / entry.name
    _check_tree(directory, entry, verify)
    part = engine.open_segment(directory / "engine", entry.n_docs)
    table, ids = read_docs(directory, entry.n_docs)
    return OpenSegment(entry.name, entry.n_docs, part, table, ids, entry.manifest_sha256)


def write_deletes(root: Path, name: str, generation: int, deleted: np.ndarray) -> tuple[str, str]:
    """Write a segment's tombstones for commit ``generation``; returns (relative path, sha256)."""
    rel = f"deletes/{name}.{generation:08d}.npy"
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(np.sort(deleted), dtype=np.int64), allow_pickle=False)
    path = root / rel
    write_atomic(path, buf.getvalue())
    return rel, sha256_file(path)


def load_live(root: Path, entry: SegmentEntry) -> np.ndarray | None:
    """The live mask of a segment in a commit (None: no deletes)."""
    if entry.deletes is None:
        return None
    path = root / entry.deletes
    if path.is_symlink() or not path.is_file():
        raise IndexFormatError(f"{path}: tombstone file missing (or a symbolic link)")
    if sha256_file(path) != entry.deletes_sha256:
        raise IndexFormatError(f"{path}: checksum differs from the commit's (edited or corrupted)")
    try:
        deleted = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{path}: unreadable tombstones ({exc})") from exc
    if (deleted.dtype != np.int64 or deleted.ndim != 1 or deleted.size != entry.n_deleted
            or (deleted.size and (deleted[0] < 0 or deleted[-1] >= entry.n_docs or np.any(np.diff(deleted) <= 0)))):
        raise IndexFormatError(f"{path}: expected {entry.n_deleted} sorted positions below {entry.n_docs}")
    live = np.ones(entry.n_docs, bool)
    live[deleted] = False
    return live
