"""Shared on-disk conventions for every lsr index directory (see docs/FORMAT.md).

An index is a directory holding ``manifest.json`` plus fixed-name files. The manifest records
the format name and version, the library version, and for every data file its size and
SHA-256, so that truncated, edited or foreign directories are refused on load. Writes go to a
temporary sibling directory that is renamed into place only when complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lsr.errors import IndexFormatError

MANIFEST = "manifest.json"

__all__ = [
    "IndexFormatError",
    "atomic_directory",
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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, format_name: str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes.

    An existing directory at ``path`` is replaced only if it is an index of the same
    ``format_name`` (so a typo never deletes unrelated data) and ``overwrite`` is true. If the
    block raises, the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        if any(path.iterdir()):
            try:
                existing = json.loads((path / MANIFEST).read_text())["format"]
            except Exception:
                existing = None
            if existing != format_name:
                raise FileExistsError(
                    f"{path} exists and is not an {format_name} index; refusing to overwrite it"
                )
            if not overwrite:
                raise FileExistsError(f"{path} already holds an index (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Swap into place: move the old index aside, rename the new one in, then delete the old.
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    """Write ``manifest.json`` last, recording size and SHA-256 of every other file."""
    files = {}
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            rel = f.relative_to(directory).as_posix()
            files[rel] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {
        "format": format_name,
        "format_version": format_version,
        "lsr_version": _library_version(),
        **fields,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(
    directory: str | os.PathLike, format_name: str, format_version: int, verify: bool = True
) -> dict[str, Any]:
    """Read and check a manifest: format, version, file presence, sizes and (if ``verify``) hashes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: no such index directory")
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise IndexFormatError(f"{directory}: not an lsr index (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{mpath}: corrupt manifest ({exc})") from exc
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise IndexFormatError(f"{mpath}: corrupt manifest (no 'format' field)")
    if manifest["format"] != format_name:
        raise IndexFormatError(f"{directory}: is a {manifest['format']!r} directory, not {format_name!r}")
    if manifest.get("format_version") != format_version:
        raise IndexFormatError(
            f"{directory}: format version {manifest.get('format_version')} is not supported "
            f"(this lsr reads version {format_version}); rebuild the index"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IndexFormatError(f"{mpath}: corrupt manifest (no 'files' table)")
    for rel, meta in files.items():
        f = directory / rel
        if not f.is_file():
            raise IndexFormatError(f"{directory}: missing file {rel}")
        size = f.stat().st_size
        if size != meta.get("bytes"):
            raise IndexFormatError(
                f"{f}: size {size} bytes, manifest says {meta.get('bytes')} (truncated or edited)"
            )
        if verify and _sha256(f) != meta.get("sha256"):
            raise IndexFormatError(f"{f}: checksum mismatch (file was edited or corrupted)")
    return manifest


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

    try:
        n, total, dim = int(fields["n_items"]), int(fields["total_vectors"]), int(fields["dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{directory}/manifest.json: bad multi-vector fields ({exc})") from exc
    vectors = load_array(directory, f"{prefix}.npy", np.float16, (total, dim), mmap)
    offsets = load_array(directory, f"{prefix}_offsets.npy", np.int64, (n + 1,), mmap)
    try:
        return MultiVectors(vectors, np.asarray(offsets))
    except ValueError as exc:
        raise IndexFormatError(f"{directory}/{prefix}_offsets.npy: {exc}") from exc
