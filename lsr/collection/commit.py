"""Commit points of a collection: ``commit_<generation>.json``, written atomically.

A commit names the live segments in collection order, each with its document count, the SHA-256
of its ``manifest.json`` and its current tombstone file (``deletes/<segment>.<generation>.npy``,
with its SHA-256). The file is written to a temporary name, fsynced, renamed into place and the
directory fsynced: a commit file that exists is complete. The newest generation is the state of
the collection; a newest commit file that does not check out (edited, bit-flipped) is refused
with :class:`IndexFormatError`, never skipped for an older one (which would silently search an
older state). See docs/collections.md, "Storage guarantees".

Crash points for the kill tests: when the environment variable :data:`CRASH_ENV` names one of
:data:`CRASH_POINTS`, the process ends with ``os._exit(CRASH_EXIT)`` there.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsr.errors import IndexFormatError

__all__ = ["Commit", "SegmentEntry", "write_commit", "read_latest_commit", "commit_generations",
           "fsync_path", "fsync_tree", "write_atomic", "sha256_file", "crash_point",
           "CRASH_ENV", "CRASH_EXIT", "CRASH_POINTS", "TEMP_MARK"]

FORMAT, VERSION = "lsr.collection.commit", 1
CRASH_ENV = "LSR_COLLECTION_CRASH_AT"
CRASH_EXIT = 87
#: ``LSR_COLLECTION_FSYNC=0`` skips every fsync: a killed process still leaves a valid collection
#: (renames are atomic), a power loss may not. For tests and throwaway collections only.
FSYNC_ENV = "LSR_COLLECTION_FSYNC"
#: in the order a write passes them (create-staged only in Collection.create, merge-written only in
#: merges, deletes-written only with deletes)
CRASH_POINTS = ("create-staged", "segment-written", "segment-synced", "merge-written", "deletes-written",
                "commit-written", "commit-renamed", "committed", "cleaning")
#: every temporary name a writer makes contains this (removed on the next writer open)
TEMP_MARK = ".tmp-"
_COMMIT = re.compile(r"commit_(\d{8,})\.json")
_SEGMENT = re.compile(r"seg_\d{8,}")
_DELETES = re.compile(r"deletes/(seg_\d{8,})\.(\d{8,})\.npy")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def crash_point(name: str) -> None:
    """Test hook: end the process here when :data:`CRASH_ENV` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


def _fsync_on() -> bool:
    return os.environ.get(FSYNC_ENV, "1") != "0"


def fsync_path(path: Path, directory: bool = False) -> None:
    if not _fsync_on():
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        if not directory:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (deepest first), then ``root``'s parent."""
    if not _fsync_on():
        return
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath), directory=True)
    fsync_path(root.parent, directory=True)


def write_atomic(path: Path, data: bytes, before_rename: str | None = None,
                 after_rename: str | None = None) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename it to ``path``, fsync the directory."""
    tmp = path.with_name(f"{path.name}{TEMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if _fsync_on():
                os.fsync(f.fileno())
        if before_rename:
            crash_point(before_rename)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if after_rename:
        crash_point(after_rename)
    fsync_path(path.parent, directory=True)  # the new name itself survives a power loss


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SegmentEntry:
    """One live segment of a commit."""

    name: str
    n_docs: int
    manifest_sha256: str
    deletes: str | None = None          # relative to the collection directory
    deletes_sha256: str | None = None
    n_deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_docs": self.n_docs, "manifest_sha256": self.manifest_sha256,
                "deletes": self.deletes, "deletes_sha256": self.deletes_sha256, "n_deleted": self.n_deleted}


@dataclass(frozen=True)
class Commit:
    generation: int
    segments: tuple[SegmentEntry, ...]
    next_segment: int

    @property
    def n_live(self) -> int:
        return sum(s.n_docs - s.n_deleted for s in self.segments)

    def files(self) -> set[str]:
        """Every path (relative to the collection) this commit names, its own file included."""
        out = {commit_name(self.generation)}
        for s in self.segments:
            out.add(f"segments/{s.name}")
            if s.deletes:
                out.add(s.deletes)
        return out


def commit_name(generation: int) -> str:
    return f"commit_{generation:08d}.json"


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_commit(directory: Path, commit: Commit) -> Path:
    """Write ``commit`` durably (temp, fsync, rename, fsync directory); returns its path."""
    body = {"format": FORMAT, "format_version": VERSION, "generation": commit.generation,
            "segments": [s.to_dict() for s in commit.segments], "next_segment": commit.next_segment}
    body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
    path = directory / commit_name(commit.generation)
    write_atomic(path, (json.dumps(body, indent=1) + "\n").encode(), before_rename="commit-written",
                 after_rename="commit-renamed")
    return path


def commit_generations(directory: Path) -> list[int]:
    """Generations of the commit files present, newest first."""
    found = []
    for entry in os.listdir(directory):
        m = _COMMIT.fullmatch(entry)
        if m:
            found.append(int(m.group(1)))
    return sorted(found, reverse=True)


def _bad(path: Path, message: str) -> IndexFormatError:
    return IndexFormatError(f"{path}: {message}")


def _int(value: Any, path: Path, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, f"field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def read_commit(directory: Path, generation: int) -> Commit:
    """Commit ``generation``, checked: checksum, fields, and every path it names inside ``directory``."""
    path = directory / commit_name(generation)
    if path.is_symlink():
        raise _bad(path, "a symbolic link (commit files must be regular files inside the collection)")
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise _bad(path, f"unreadable commit ({exc})") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise _bad(path, f"not an {FORMAT} file")
    if body.get("format_version") != VERSION:
        raise _bad(path, f"commit format version {body.get('format_version')!r} is not supported")
    checksum = body.pop("checksum", None)
    if checksum != hashlib.sha256(_canonical(body)).hexdigest():
        raise _bad(path, "checksum mismatch (the commit file was edited or corrupted)")
    if _int(body.get("generation"), path, "generation") != generation:
        raise _bad(path, f"field 'generation' is {body.get('generation')}, the file name says {generation}")
    next_segment = _int(body.get("next_segment"), path, "next_segment")
    entries, seen = [], set()
    raw = body.get("segments")
    if not isinstance(raw, list):
        raise _bad(path, "field 'segments' must be a list")
    for i, s in enumerate(raw):
        where = f"segments[{i}]"
        if not isinstance(s, dict):
            raise _bad(path, f"field {where!r} must be an object")
        name = s.get("name")
        if not isinstance(name, str) or not _SEGMENT.fullmatch(name) or name in seen:
            raise _bad(path, f"field '{where}.name' must be a new segment name seg_NNNNNNNN, got {name!r}")
        seen.add(name)
        n_docs = _int(s.get("n_docs"), path, f"{where}.n_docs", 1)
        n_deleted = _int(s.get("n_deleted", 0), path, f"{where}.n_deleted")
        digest = s.get("manifest_sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _bad(path, f"field '{where}.manifest_sha256' must be 64 hex digits")
        deletes, del_digest = s.get("deletes"), s.get("deletes_sha256")
        if deletes is not None:
            m = _DELETES.fullmatch(deletes) if isinstance(deletes, str) else None
            if m is None or m.group(1) != name:
                raise _bad(path, f"field '{where}.deletes' must be deletes/{name}.<generation>.npy inside the "
                                 f"collection, got {deletes!r}")
            if not isinstance(del_digest, str) or not _HEX64.fullmatch(del_digest):
                raise _bad(path, f"field '{where}.deletes_sha256' must be 64 hex digits")
            if not 0 < n_deleted < n_docs:
                raise _bad(path, f"field '{where}.n_deleted' must be in [1, {n_docs - 1}] with a deletes file")
        elif n_deleted:
            raise _bad(path, f"field '{where}.n_deleted' is {n_deleted} but 'deletes' is null")
        if _int(int(name[4:]), path, f"{where}.name") >= next_segment:
            raise _bad(path, f"field '{where}.name' {name} is not below next_segment {next_segment}")
        entries.append(SegmentEntry(name, n_docs, digest, deletes, del_digest, n_deleted))
    return Commit(generation, tuple(entries), next_segment)


def read_latest_commit(directory: Path) -> Commit | None:
    """The newest commit (None when there is none yet: a collection being created)."""
    generations = commit_generations(directory)
    return read_commit(directory, generations[0]) if generations else None
