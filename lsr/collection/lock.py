"""One writer at a time: ``COLLECTION/write.lock``.

The lock is an exclusive ``flock`` on ``write.lock`` (held by the kernel for the writer's open
file, so it ends with the process however it dies: a lock left by a killed writer is stale by
construction and the next writer takes it over, logging who held it). The file records the
holder ``{"pid", "host", "started"}`` for the error message a second writer gets. The file is
never removed (removing a lock file others may have open races with them); an unlocked file is
not a lock. A :class:`WriteLock` garbage collected without :meth:`WriteLock.release` (a writer
``Collection`` dropped unclosed) releases the lock then (``weakref.finalize``); in a forked child
it only closes its copy of the descriptor, never the parent's lock.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path
from typing import Any

from lsr.errors import CollectionLockedError

logger = logging.getLogger(__name__)

__all__ = ["WriteLock", "LOCK_NAME"]

LOCK_NAME = "write.lock"


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        holder = json.loads(data) if data.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class WriteLock:
    """The writer's lock on ``directory`` (acquired on construction, released by :meth:`release`)."""

    def __init__(self, directory: Path) -> None:
        import fcntl

        self.path = Path(directory) / LOCK_NAME
        if self.path.is_symlink():
            raise CollectionLockedError(f"{self.path}: a symbolic link, not a lock file (refused)")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CollectionLockedError(
                f"{self.path}: the collection is open for writing by pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (since {holder.get('started', '?')}); open it with "
                f"readonly=True to search it") from None
        previous = _read_holder(fd)
        if previous.get("pid"):
            logger.warning("%s: took over a stale lock of pid %s on %s (that writer ended without "
                           "closing the collection)", self.path, previous.get("pid"), previous.get("host"))
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd: int | None = fd
        self.holder = record
        # a lock dropped without release() (its Collection garbage collected) is released then
        self._finalizer = weakref.finalize(self, _unlock, fd, os.getpid())

    def moved_to(self, directory: Path) -> None:
        """The locked directory was renamed to ``directory`` (a created collection's staging
        directory renamed into place: the lock goes with it, it is never let go in between)."""
        self.path = Path(directory) / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check(self) -> None:
        """:class:`CollectionLockedError` unless ``write.lock`` at the path is still the file this
        writer locked: a collection removed, or replaced at its path (``lsr index --overwrite``,
        removed and created again), is no longer this writer's to change."""
        if self._fd is None:
            raise CollectionLockedError(f"{self.path}: this writer released the lock (the collection is closed)")
        own = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (own.st_dev, own.st_ino):
            raise CollectionLockedError(f"{self.path}: the collection was replaced or removed since this writer "
                                        f"opened it; this writer no longer owns it (open the collection again)")

    def release(self) -> None:
        """Clear the holder record and unlock (idempotent)."""
        if self._fd is not None:
            self._fd = None
            self._finalizer()


def _unlock(fd: int, owner: int) -> None:
    """Clear the holder record, unlock and close ``fd``. A forked child (another pid) holds the
    same open file, whose flock is its parent's: it only closes its copy of the descriptor (a
    flock ends when the last one closes, or with LOCK_UN, which would end the parent's lock)."""
    import fcntl

    try:
        if os.getpid() == owner:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
