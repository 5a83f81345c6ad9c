"""Shared on-disk conventions for every lsr index directory (see docs/FORMAT.md).

An index is a directory holding ``manifest.json`` plus fixed-name files. The manifest records
the format name and version, the library version, and for every data file its size and
SHA-256, so that truncated, edited or foreign directories are refused on load; manifest fields
are read through the ``field_*`` checkers, so a hostile manifest gets a one-line
:class:`IndexFormatError` naming the file and the field. Saves go through
:func:`~lsr.io.swap.atomic_directory` (a versioned directory swapped in by renaming a link).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lsr.errors import IndexFormatError
from lsr.io.swap import MANIFEST, atomic_directory, remove_index, resolve_dir

#: the largest count or byte size a manifest field may give
MAX_COUNT = 2**48
_HEX64 = re.compile(r"[0-9a-f]{64}")

__all__ = [
    "IndexFormatError",
    "atomic_directory",
    "remove_index",
    "resolve_dir",
    "require_files",
    "field_int",
    "field_float",
    "field_bool",
    "field_str",
    "field_dict",
    "inside",
    "save_array",
    "load_array",
    "write_manifest",
    "read_manifest",
    "save_ids",
    "load_ids",
    "read_parquet",
    "int64_column",
]


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` when it is an integer >= 1 (not a bool), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _library_version() -> str:
    from lsr import __version__

    return __version__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_array(directory: Path, name: str, array: np.ndarray) -> None:
    np.save(directory / name, np.ascontiguousarray(array), allow_pickle=False)


def save_ids(directory: Path, name: str, ids: np.ndarray | list[str]) -> None:
    """Write external string ids as a one-column Parquet file (column ``id``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array([str(x) for x in ids], type=pa.string())})
    pq.write_table(table, directory / name)


def read_parquet(file: Path):
    """The whole Parquet ``file`` as a pyarrow Table.

    Reads through ``ParquetFile`` rather than ``pq.read_table``: the latter goes through
    ``pyarrow.dataset``, whose first import costs more than everything else in opening a small
    index (see docs/startup.md)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(file) as f:
        return f.read()


def int64_column(table: Any, name: str) -> np.ndarray:
    """Column ``name`` of a pyarrow Table as ``int64`` (nulls refused), read from its buffers:
    pyarrow's ``to_numpy`` imports pandas, which costs more than opening a small index."""
    import pyarrow as pa

    column = table.column(name).cast(pa.int64())
    if column.null_count:
        raise ValueError(f"column {name!r} has {column.null_count} missing values")
    parts = [np.frombuffer(c.buffers()[1], np.int64, len(c), c.offset * 8) for c in column.chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def load_ids(directory: Path, name: str, expected: int) -> np.ndarray:
    file = directory / name
    try:
        table = read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise IndexFormatError(f"{file}: cannot read ids ({exc})") from exc
    if table.column_names != ["id"] or table.num_rows != expected:
        raise IndexFormatError(
            f"{file}: expected one column 'id' with {expected} rows, "
            f"found columns {table.column_names} with {table.num_rows} rows"
        )
    return np.asarray(table.column("id").to_pylist(), dtype=object)


def write_manifest(directory: Path, format_name: str, format_version: int, fields: dict[str, Any]) -> None:
    """Write ``manifest.json`` last, recording size and SHA-256 of every other file of the tree
    (the manifests of nested index directories included)."""
    files = {}
    for f in sorted(directory.rglob("*")):
        rel = f.relative_to(directory).as_posix()
        if f.is_file() and rel != MANIFEST:
            files[rel] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {
        "format": format_name,
        "format_version": format_version,
        "lsr_version": _library_version(),
        **fields,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------- checked manifest fields
_MISSING = object()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(m: dict[str, Any], name: str, where: Path) -> Any:
    """Field ``name`` (``a.b`` for nested objects) of manifest ``m``; :class:`IndexFormatError`
    naming the manifest and the field when it is missing."""
    value: Any = m
    for part in name.split("."):
        if not isinstance(value, dict):
            raise IndexFormatError(f"{where}: field {name!r} must be inside an object, got {_short(value)}")
        value = value.get(part, _MISSING)
        if value is _MISSING:
            raise IndexFormatError(f"{where}: missing field {name!r}")
    return value


def field_int(m: dict[str, Any], name: str, where: Path, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    """Integer field ``name`` in ``[minimum, maximum]`` (not a bool, float or string)."""
    value = _field(m, name, where)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise IndexFormatError(f"{where}: field {name!r} must be an integer in [{minimum}, {maximum}], "
                               f"got {_short(value)}")
    return value


def field_float(m: dict[str, Any], name: str, where: Path) -> float:
    """Finite positive number field ``name``."""
    value = _field(m, name, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise IndexFormatError(f"{where}: field {name!r} must be a finite positive number, got {_short(value)}")
    return float(value)


def field_bool(m: dict[str, Any], name: str, where: Path) -> bool:
    value = _field(m, name, where)
    if not isinstance(value, bool):
        raise IndexFormatError(f"{where}: field {name!r} must be true or false, got {_short(value)}")
    return value


def field_str(m: dict[str, Any], name: str, where: Path) -> str:
    value = _field(m, name, where)
    if not isinstance(value, str):
        raise IndexFormatError(f"{where}: field {name!r} must be a string, got {_short(value)}")
    return value


def field_dict(m: dict[str, Any], name: str, where: Path, optional: bool = True) -> dict[str, Any]:
    """Object field ``name``; ``{}`` when ``optional`` and it is missing or null."""
    value = m.get(name) if optional and isinstance(m, dict) else _field(m, name, where)
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise IndexFormatError(f"{where}: field {name!r} must be an object, got {_short(value)}")
    return value


def safe_relative(rel: Any) -> bool:
    """Whether ``rel`` is a relative POSIX path that stays inside its directory: a non-empty
    string without ``..``, ``.``, empty parts, a leading ``/``, a drive, backslashes or NUL."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and ":" not in parts[0]


def inside(directory: Path, rel: Any, where: Path, name: str) -> Path:
    """``directory / rel`` for a :func:`safe_relative` ``rel`` whose every component below
    ``directory`` exists and is not a symbolic link; else :class:`IndexFormatError` naming
    ``where`` and field ``name``."""
    if not safe_relative(rel):
        raise IndexFormatError(f"{where}: field {name!r} must be a relative path inside the directory, "
                               f"got {_short(rel)}")
    target = directory
    for part in rel.split("/"):
        target = target / part
        if target.is_symlink():
            raise IndexFormatError(f"{where}: field {name!r}: {target} is a symbolic link")
    return target


# ---------------------------------------------------------------------- reading and checking
def _listed_files(mpath: Path, files: Any) -> dict[str, tuple[int, str]]:
    """The manifest's ``files`` table checked: safe names, byte counts, hex SHA-256 digests."""
    if not isinstance(files, dict):
        raise IndexFormatError(f"{mpath}: corrupt manifest (field 'files' must be an object, got {_short(files)})")
    out = {}
    for rel, meta in files.items():
        if not safe_relative(rel) or rel == MANIFEST:
            raise IndexFormatError(f"{mpath}: field 'files' names {_short(rel)}, not a relative path inside "
                                   f"the directory")
        if not isinstance(meta, dict):
            raise IndexFormatError(f"{mpath}: field 'files.{rel}' must be an object, got {_short(meta)}")
        size, digest = meta.get("bytes"), meta.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_COUNT:
            raise IndexFormatError(f"{mpath}: field 'files.{rel}.bytes' must be a byte count, got {_short(size)}")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise IndexFormatError(f"{mpath}: field 'files.{rel}.sha256' must be 64 hex digits, got {_short(digest)}")
        out[rel] = (size, digest)
    return out


def _tree_files(directory: Path) -> set[str]:
    """Every regular file below ``directory`` (relative POSIX names); a symbolic link or special
    file anywhere below it is refused."""
    found = set()
    for dirpath, dirs, names in os.walk(directory, followlinks=False):
        base = Path(dirpath)
        for name in dirs + names:
            full = base / name
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise IndexFormatError(f"{full}: a symbolic link inside an index directory (refused: index "
                                       f"files must be regular files inside it)")
            if name in names:
                if not stat.S_ISREG(mode):
                    raise IndexFormatError(f"{full}: not a regular file")
                found.add(full.relative_to(directory).as_posix())
    return found


def _hashes(paths: list[Path]) -> list[str]:
    """SHA-256 of each file; large sets in parallel threads (hashlib releases the GIL)."""
    total = sum(p.stat().st_size for p in paths)
    workers = min(len(paths), os.cpu_count() or 1, 8)
    if workers < 2 or total < (32 << 20):
        return [_sha256(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_sha256, paths))


def read_manifest(
    directory: str | os.PathLike, format_name: str, format_version: int, verify: bool = True,
    required: Iterable[str] = (),
) -> dict[str, Any]:
    """Read and check a manifest (see docs/FORMAT.md, "Loading checks").

    Always: the JSON is an object with the expected ``format`` and ``format_version``; its
    ``files`` table is well-formed and names only paths inside ``directory``; the directory
    holds no symbolic link and no file the table does not name (nested manifests of directories
    written before lsr listed them excepted); every ``required`` file is named; every named
    file exists with its recorded size. With ``verify`` (the default), every named file's
    SHA-256 matches. ``directory`` is read as given: loaders pass it through :func:`resolve_dir`
    first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: no such index directory")
    mpath = directory / MANIFEST
    if not mpath.is_file() or mpath.is_symlink():
        raise IndexFormatError(f"{directory}: not an lsr index (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:  # also over-long integers
        raise IndexFormatError(f"{mpath}: corrupt manifest ({_short(str(exc))})") from exc
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{mpath}: corrupt manifest (a JSON {type(manifest).__name__}, not an object)")
    if "format" not in manifest:
        raise IndexFormatError(f"{mpath}: corrupt manifest (no 'format' field)")
    if not isinstance(manifest["format"], str):
        raise IndexFormatError(f"{mpath}: field 'format' must be a string, got {_short(manifest['format'])}")
    if manifest["format"] != format_name:
        raise IndexFormatError(f"{directory}: is a {_short(manifest['format'])} directory, not {format_name!r}")
    found = manifest.get("format_version")
    if found != format_version or isinstance(found, bool):
        raise IndexFormatError(
            f"{mpath}: format version {_short(found)} is not supported "
            f"(this lsr reads version {format_version}); rebuild the index"
        )
    files = _listed_files(mpath, manifest.get("files"))
    for rel in required:
        if rel not in files:
            raise IndexFormatError(f"{mpath}: does not checksum {rel}, a file every {format_name} directory has")
    try:
        _check_files(directory, files, verify)
    except OSError as exc:  # e.g. a version removed by a save while this load read it
        raise IndexFormatError(f"{directory}: unreadable while loading ({exc})") from exc
    return manifest


def _check_files(directory: Path, files: dict[str, tuple[int, str]], verify: bool) -> None:
    present = _tree_files(directory)
    for rel in sorted(files):
        if rel not in present:
            raise IndexFormatError(f"{directory}: missing file {rel}")
    unlisted = sorted(r for r in present - files.keys() - {MANIFEST} if not r.endswith("/" + MANIFEST))
    if unlisted:
        raise IndexFormatError(f"{directory}/{unlisted[0]}: a file the manifest does not list "
                               f"(added after the save, or the manifest was edited)")
    for rel, (size, _) in sorted(files.items()):
        actual = (directory / rel).stat().st_size
        if actual != size:
            raise IndexFormatError(
                f"{directory / rel}: size {actual} bytes, manifest says {size} (truncated or edited)")
    if verify:
        names = sorted(files)
        for rel, digest in zip(names, _hashes([directory / r for r in names])):
            if digest != files[rel][1]:
                raise IndexFormatError(f"{directory / rel}: checksum mismatch (file was edited or corrupted)")


def require_files(directory: Path, manifest: dict[str, Any], names: Iterable[str]) -> None:
    """Refuse a manifest (already read by :func:`read_manifest`) that does not checksum every
    one of ``names``, the files its format's loader is about to read."""
    files = manifest.get("files") or {}
    for rel in names:
        if rel not in files:
            raise IndexFormatError(f"{directory / MANIFEST}: does not checksum {rel}, a file this "
                                   f"{manifest.get('format')} directory needs")


def load_array(
    directory: Path, name: str, dtype: np.dtype, shape: tuple[int, ...], mmap: bool = True
) -> np.ndarray:
    """Load a ``.npy`` file (memory-mapped copy-on-write by default, so kernels see one writable
    array type and the file is never modified) and check its dtype and shape."""
    file = directory / name
    try:
        arr = np.load(file, mmap_mode="c" if mmap else None, allow_pickle=False)  # copy-on-write: never writes the file
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{file}: unreadable array ({exc})") from exc
    if arr.dtype != np.dtype(dtype) or arr.shape != tuple(shape):
        raise IndexFormatError(
            f"{file}: expected {np.dtype(dtype)} array of shape {tuple(shape)}, "
            f"found {arr.dtype} of shape {arr.shape}"
        )
    return arr


def save_multivectors(directory: Path, mv: Any, prefix: str = "multivectors") -> dict[str, Any]:
    """Write a :class:`~lsr.types.MultiVectors` as ``<prefix>.npy`` (float16) and
    ``<prefix>_offsets.npy``; return the manifest fields :func:`load_multivectors` needs."""
    save_array(directory, f"{prefix}.npy", np.asarray(mv.vectors, dtype=np.float16))
    save_array(directory, f"{prefix}_offsets.npy", mv.offsets)
    return {"n_items": len(mv), "total_vectors": int(mv.vectors.shape[0]), "dim": mv.dim, "dtype": "float16"}


def load_multivectors(directory: Path, fields: dict[str, Any], prefix: str = "multivectors",
                      mmap: bool = True) -> Any:
    """The :class:`~lsr.types.MultiVectors` :func:`save_multivectors` wrote (float16, memory-mapped)."""
    from lsr.types import MultiVectors

    where = directory / MANIFEST
    n, total, dim = (field_int({"multivectors": fields}, f"multivectors.{key}", where)
                     for key in ("n_items", "total_vectors", "dim"))
    vectors = load_array(directory, f"{prefix}.npy", np.float16, (total, dim), mmap)
    offsets = load_array(directory, f"{prefix}_offsets.npy", np.int64, (n + 1,), mmap)
    try:
        return MultiVectors(vectors, np.asarray(offsets))
    except ValueError as exc:
        raise IndexFormatError(f"{directory}/{prefix}_offsets.npy: {exc}") from exc
