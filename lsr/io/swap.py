"""Crash-safe replacement of an index directory (see docs/FORMAT.md, "Saving is atomic").

A saved index at ``PATH`` is a relative symbolic link ``PATH -> .NAME.v-XXXXXXXXXXXX``, a
complete, fsynced version directory next to it. A save writes a new version directory, makes a
new link ``.NAME.link-XXXXXXXXXXXX`` to it and renames that link over ``PATH`` (``rename(2)``
of a link over a link is atomic on POSIX), then removes the previous version and any leftovers
of interrupted saves. Killed at any point, ``PATH`` names either the old or the new complete
version, never nothing and never a mix.

``PATH`` may still be a real directory (written by lsr before versioned saves): its first save
exchanges it for the link in one ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere it is
renamed aside just before the link is renamed in (the only non-atomic case, documented).

One writer per path at a time: a save removes every leftover version that is not current.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

MANIFEST = "manifest.json"

#: Test hook: a save whose environment names one of :data:`CRASH_POINTS` here ends the process
#: with ``os._exit(CRASH_EXIT)`` at that point (the kill tests of tests/test_storage_safety.py).
CRASH_ENV = "LSR_TEST_CRASH_AT"
CRASH_EXIT = 86
CRASH_POINTS = ("written", "synced", "linked", "moved-aside", "swapped", "cleaning")

_KINDS = ("v", "link", "old")

__all__ = ["atomic_directory", "remove_index", "resolve_dir", "CRASH_ENV", "CRASH_EXIT", "CRASH_POINTS"]


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


def _sibling_pattern(path: Path) -> re.Pattern[str]:
    """Names of this path's version directories, new links and renamed-aside directories."""
    return re.compile(rf"\.{re.escape(path.name)}\.({'|'.join(_KINDS)})-[0-9a-f]{{12}}")


def resolve_dir(path: str | os.PathLike) -> Path:
    """The directory a loader reads: ``path`` with its links followed, once, at the start of
    the load, so that a save swapping in a new version meanwhile cannot mix two versions."""
    return Path(os.path.realpath(path))


def _fsync(path: Path, directory: bool = False) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath), directory=True)


def _check_target(path: Path, format_name: str, overwrite: bool) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if any(path.iterdir()):
        try:
            existing = json.loads((path / MANIFEST).read_text())["format"]
        except Exception:
            existing = None
        if existing != format_name:
            raise FileExistsError(f"{path} exists and is not an {format_name} index; refusing to overwrite it")
        if not overwrite:
            raise FileExistsError(f"{path} already holds an index (pass overwrite=True to replace it)")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(path: Path, new: Path, tag: str) -> None:
    """Make ``path`` a link to version directory ``new`` (a sibling), atomically."""
    link = path.parent / f".{path.name}.link-{tag}"
    os.symlink(new.name, link)
    _fsync(path.parent, directory=True)
    _crash_point("linked")
    if path.is_symlink() or not os.path.lexists(path):
        os.replace(link, path)  # atomic: PATH names the old version until this returns
    elif path.is_dir() and not any(path.iterdir()):
        os.rmdir(path)  # an empty directory held no index
        os.replace(link, path)
    elif not _exchange(link, path):  # a real directory from before versioned saves
        old = path.parent / f".{path.name}.old-{tag}"
        os.rename(path, old)
        _crash_point("moved-aside")
        os.replace(link, path)
    _fsync(path.parent, directory=True)
    _crash_point("swapped")


def _remove(entry: Path) -> None:
    if entry.is_symlink() or not entry.is_dir():
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
    else:
        shutil.rmtree(entry, ignore_errors=True)


def clean_leftovers(path: Path) -> None:
    """Remove every version, link and renamed-aside directory of ``path`` except the current one."""
    current = os.readlink(path) if path.is_symlink() else None
    pattern = _sibling_pattern(path)
    stale = [e for e in path.parent.iterdir() if pattern.fullmatch(e.name) and e.name != current]
    for i, entry in enumerate(sorted(stale)):
        _remove(entry)
        if i == 0:
            _crash_point("cleaning")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, format_name: str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a new version directory that replaces ``path`` only if the block completes.

    An existing index at ``path`` is replaced only if it is of the same ``format_name`` (so a
    typo never deletes unrelated data) and ``overwrite`` is true. If the block raises, the new
    directory is removed and ``path`` is untouched; if the process dies, ``path`` still names a
    complete index (the old or the new one) and the next save removes what was left over.
    """
    path = Path(path)
    _check_target(path, format_name, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    new = path.parent / f".{path.name}.v-{tag}"
    new.mkdir()
    try:
        yield new
        _crash_point("written")
        _fsync_tree(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _crash_point("synced")
    _swap_in(path, new, tag)
    clean_leftovers(path)


def remove_index(path: str | os.PathLike) -> None:
    """Delete a saved index: the link at ``path`` first (so the path stops naming an index at
    once), then its version and every leftover of interrupted saves; a plain directory (an
    index from before versioned saves) is removed whole. ``shutil.rmtree`` refuses a link."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if path.parent.is_dir():
        clean_leftovers(path)
