"""Stored documents of a segment: ``docs.parquet``.

Columns: ``_id``, ``title``, ``text`` (strings), ``metadata`` (the JSON text of the metadata
object: an exact round trip) and one ``m.<key>`` column per top-level metadata key for filters
(:func:`lsr.collection.filters.metadata_columns`). A segment's table is read whole when the
segment is opened (so a reader keeps its documents after a merge removes the file).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lsr.errors import DataFormatError, IndexFormatError

__all__ = ["DOCS_FILE", "check_document", "check_documents", "write_docs", "read_docs", "merged_docs", "row_dict",
           "contents"]

DOCS_FILE = "docs.parquet"
_BASE_COLUMNS = ("_id", "title", "text", "metadata")


_FIELDS = ("_id", "title", "text", "metadata")


def _finite_json(value: Any, bad: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"metadata value {value!r} is not finite", "metadata")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise bad("metadata keys must be strings", "metadata")
            _finite_json(v, bad)
    elif isinstance(value, list):
        for v in value:
            _finite_json(v, bad)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise bad(f"metadata value of type {type(value).__name__} is not JSON", "metadata")


def _unencodable(text: str) -> str | None:
    """Why UTF-8 (Parquet, JSON files) cannot hold ``text``, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate ({ascii(exc.object[exc.start])}) at {exc.start}, which UTF-8 cannot encode"
    return None


def check_document(doc: Any, path: str | os.PathLike = "documents", line: int | None = None,
                   where: str | None = None) -> dict[str, Any]:
    """One document as a plain dict ``{_id, title, text, metadata}``, checked; a bad one is a
    one-line :class:`DataFormatError` naming ``path``, ``line`` and the field. ``where`` (e.g.
    ``"document 3"``) prefixes the message until the id is known."""
    from lsr.io.readers import check_id

    def bad(message: str, field: str | None = None) -> DataFormatError:
        return DataFormatError(path, line, f"{where}: {message}" if where else message, field)

    if not isinstance(doc, Mapping):
        raise bad(f"expected a dict, got {type(doc).__name__}")
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str) or not doc_id:
        raise bad(f"'_id' must be a non-empty string, got {doc_id!r}", "_id")
    why = check_id(doc_id)
    if why is not None:  # the corpus readers' rule: a TREC run could not hold it
        raise bad(f"'_id' {ascii(doc_id)} {why}", "_id")
    where = f"document {doc_id!r}"
    title, text = doc.get("title"), doc.get("text", "")
    title = "" if title is None else title
    for name, value in (("title", title), ("text", text)):
        if not isinstance(value, str):
            raise bad(f"{name!r} must be a string, got {type(value).__name__}", name)
        why = _unencodable(value)
        if why is not None:
            raise bad(f"{name!r} {why}", name)
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise bad("'metadata' must be an object", "metadata")
    metadata = dict(metadata or {})
    try:
        _finite_json(metadata, bad)
        why = _unencodable(json.dumps(metadata, ensure_ascii=False))
    except RecursionError:
        raise bad("'metadata' is nested too deeply", "metadata") from None
    if why is not None:
        raise bad(f"'metadata' {why}", "metadata")
    unknown = set(doc) - set(_FIELDS)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(sorted(map(str, unknown)))} (put them in 'metadata')",
                  str(sorted(map(str, unknown))[0]))
    return {"_id": doc_id, "title": title, "text": text, "metadata": metadata}


def check_documents(docs: Iterable[Mapping[str, Any]], start: int = 0,
                    seen: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Documents as plain dicts ``{_id, title, text, metadata}``, checked (:func:`check_document`);
    a repeated id in the batch is refused naming it. ``start``: the number of the first document
    (in messages); ``seen``: ids of earlier parts of the same batch (updated)."""
    out: list[dict[str, Any]] = []
    seen = {} if seen is None else seen
    dups: list[str] = []
    for i, doc in enumerate(docs, start):
        checked = check_document(doc, where=f"document {i}")
        doc_id = checked["_id"]
        if doc_id in seen:
            dups.append(doc_id)
        seen[doc_id] = i
        out.append(checked)
    if dups:
        shown = ", ".join(repr(d) for d in sorted(set(dups))[:5])
        raise ValueError(f"{len(set(dups))} id(s) appear more than once in this batch: {shown}")
    return out


def contents(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What an engine encodes: ``title + " " + text`` (the text alone without a title), as the corpus readers."""
    return [f"{d['title']} {d['text']}" if d["title"] else d["text"] for d in docs]


def _table(ids: list[str], titles: list[str], texts: list[str], metadata_json: list[str],
           metadatas: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    from lsr.collection.filters import metadata_columns

    base = pa.table({"_id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string()),
                     "text": pa.array(texts, pa.string()), "metadata": pa.array(metadata_json, pa.string())})
    extra = metadata_columns(metadatas)
    for i, name in enumerate(extra.column_names):
        base = base.append_column(extra.schema.field(i), extra.column(i))
    return base


def write_docs(directory: Path, docs: Sequence[Mapping[str, Any]]) -> None:
    import pyarrow.parquet as pq

    table = _table([d["_id"] for d in docs], [d["title"] for d in docs], [d["text"] for d in docs],
                   [json.dumps(d["metadata"], ensure_ascii=False, sort_keys=False) for d in docs],
                   [d["metadata"] for d in docs])
    pq.write_table(table, directory / DOCS_FILE, compression="zstd")


def merged_docs(tables: Sequence[Any], keeps: Sequence[np.ndarray], directory: Path) -> None:
    """Write the kept rows of ``tables`` (segment order) as one docs.parquet (filter columns rebuilt)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept = [t.select(list(_BASE_COLUMNS)).filter(pa.array(k)) for t, k in zip(tables, keeps)]
    base = pa.concat_tables(kept) if kept else None
    cols = {c: base.column(c).to_pylist() for c in _BASE_COLUMNS}
    table = _table(cols["_id"], cols["title"], cols["text"], cols["metadata"],
                   [json.loads(m) for m in cols["metadata"]])
    pq.write_table(table, directory / DOCS_FILE, compression="zstd")


def read_docs(directory: Path, n_docs: int) -> tuple[Any, np.ndarray]:
    """The segment's table (in memory) and its ids as an object array; checked against ``n_docs``."""
    from lsr.io.manifest import read_parquet

    file = directory / DOCS_FILE
    try:
        table = read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise IndexFormatError(f"{file}: cannot read stored documents ({exc})") from exc
    missing = [c for c in _BASE_COLUMNS if c not in table.column_names]
    if missing or table.num_rows != n_docs:
        raise IndexFormatError(f"{file}: expected columns {', '.join(_BASE_COLUMNS)} and {n_docs} rows, found "
                               f"{table.column_names} with {table.num_rows} rows")
    ids = np.asarray(table.column("_id").to_pylist(), dtype=object)
    if len(set(ids.tolist())) != ids.size or any(not isinstance(i, str) or not i for i in ids):
        raise IndexFormatError(f"{file}: column '_id' must hold distinct non-empty strings")
    return table, ids


def row_dict(table: Any, pos: int, fields: Sequence[str] = ("title", "text", "metadata")) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": table.column("_id")[pos].as_py()}
    for f in fields:
        value = table.column(f)[pos].as_py()
        out[f] = json.loads(value) if f == "metadata" else value
    return out
