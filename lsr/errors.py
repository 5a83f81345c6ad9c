"""Every error class a user of lsr catches, in one place.

Both derive from ``ValueError`` (bad input is a value error), so code that catches ``ValueError``
keeps working; catch these to tell a damaged file from a bad argument.

>>> from lsr.errors import DataFormatError
>>> str(DataFormatError("queries.tsv", 3, "empty query id"))
'queries.tsv:3: empty query id'
"""
from __future__ import annotations

import os

__all__ = ["LsrError", "IndexFormatError", "DataFormatError", "ModelNotFoundError", "FilterError",
           "CollectionLockedError", "ShardError"]


class LsrError(Exception):
    """Base of lsr's own errors."""


class IndexFormatError(LsrError, ValueError):
    """An index directory is missing, truncated, edited, foreign or of another version."""


class DataFormatError(LsrError, ValueError):
    """A corpus, query, qrels or run file is malformed; the message names file, line and field."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str, field: str | None = None):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path, self.line, self.field = str(path), line, field


class ModelNotFoundError(LsrError, FileNotFoundError):
    """A model named by path or hub id cannot be found (no such directory; a hub id neither cached
    nor reachable). A ``FileNotFoundError`` (so an ``OSError``): code that caught the missing
    directory before this class existed still catches it."""


class FilterError(LsrError, ValueError):
    """A metadata filter of a collection search is malformed: unknown operator or field, an
    operand of the wrong type; the one-line message names the field and the operator."""


class CollectionLockedError(LsrError, RuntimeError):
    """Another writer holds a collection's ``write.lock``; the one-line message names the lock
    file and the holder's pid and host. Open the collection with ``readonly=True`` to search it."""


class ShardError(LsrError, RuntimeError):
    """A shard of a sharded collection could not answer (its Ray actor died, raised or timed out):
    the one-line message names the shard number and directory. ``shard`` holds the number."""

    def __init__(self, shard: int, message: str):
        super().__init__(message)
        self.shard = shard
