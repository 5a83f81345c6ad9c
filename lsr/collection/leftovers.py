"""Leftovers beside a collection: staging directories of interrupted creates and overwrites.

Writing a collection ``NAME`` uses these siblings (``HEX`` is 12 hex digits):

- ``.NAME.tmp-HEX``: :meth:`Collection.create` builds the collection here and renames it to ``NAME``;
- ``.NAME.new-HEX`` / ``.NAME.old-HEX``: ``lsr index --overwrite`` builds the new collection in the
  first, exchanges it with ``NAME`` and removes the second (the old one);
- ``..NAME.new-HEX.tmp-HEX``: the staging directory of that new collection.

A process killed while it writes one leaves it behind. :func:`remove_stale_siblings` (called by a
writer opening ``NAME``, which holds its ``write.lock``) removes those that no live process can
be writing. The rule, since the names carry no pid:

- a directory holding a ``write.lock`` is removed only when this process can take that lock's
  ``flock`` (and it holds it while removing). A creator locks its staging directory's
  ``write.lock`` right after making it and keeps that lock through the rename (the new
  collection's writer inherits it); an overwrite's new collection is locked by its writer, the
  old one by the overwrite until the swap is done. A lock the kernel dropped (its holder died)
  is free, so what a killed writer left goes at once;
- a directory without ``write.lock`` (a creator killed between ``mkdir`` and taking the lock,
  or a staging directory of an older lsr) is removed once neither its mtime nor its ctime (a
  rename sets it) has changed for :data:`STALE_SECONDS`;
- symbolic links and anything else are left alone.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
from pathlib import Path

from lsr.collection.commit import TEMP_MARK
from lsr.collection.lock import LOCK_NAME

logger = logging.getLogger(__name__)

__all__ = ["remove_stale_siblings", "sibling_pattern", "STALE_SECONDS"]

#: a leftover without ``write.lock`` untouched this long (seconds) is no one's work in progress
STALE_SECONDS = 3600.0
_HEX = "[0-9a-f]{12}"


def sibling_pattern(name: str) -> re.Pattern[str]:
    """Names of the staging siblings of collection directory ``name`` (see the module docstring)."""
    n, tmp = re.escape(name), re.escape(TEMP_MARK)
    return re.compile(rf"\.{n}(?:{tmp}|\.new-|\.old-){_HEX}|\.\.{n}\.new-{_HEX}{tmp}{_HEX}")


def _take_free_lock(directory: Path) -> int | None:
    """The fd of ``directory/write.lock`` locked by this process when nobody held it; None when
    someone holds it; FileNotFoundError when there is no such file."""
    import fcntl

    fd = os.open(directory / LOCK_NAME, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def remove_stale_siblings(path: Path, now: float | None = None) -> list[str]:
    """Remove the staging siblings of collection ``path`` that no live process can be writing
    (the rule of the module docstring); returns the names removed."""
    pattern = sibling_pattern(path.name)
    now = time.time() if now is None else now
    removed = []
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        return removed
    for name in names:
        if not pattern.fullmatch(name):
            continue
        entry = path.parent / name
        try:
            st = os.lstat(entry)
            if not os.path.isdir(entry) or os.path.islink(entry):
                continue
            try:
                fd = _take_free_lock(entry)
            except FileNotFoundError:
                fd = -1
            if fd is None:
                continue  # held: a creator or writer is at work there
            if fd == -1 and now - max(st.st_mtime, st.st_ctime) < STALE_SECONDS:
                continue  # no lock (yet): maybe a creator that has just made it
        except OSError:  # gone meanwhile (renamed or removed by its owner)
            continue
        try:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        removed.append(name)
    if removed:
        logger.info("%s: removed %d leftover staging director%s of interrupted writes: %s", path,
                    len(removed), "y" if len(removed) == 1 else "ies", ", ".join(removed))
    return removed
