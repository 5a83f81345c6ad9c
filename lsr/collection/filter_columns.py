"""How filters see a segment's metadata: the ``m.<key>`` columns of docs.parquet
(``metadata_columns``, written by the documents store), their types (``infer_schema``) and their
split by kind for evaluation (``field_views``). See docs/collections.md, "Filters".

>>> t = metadata_columns([{"year": 2020, "lang": "en"}, {"year": 2.5, "lang": 3}])
>>> [(f.name, str(f.type)) for f in t.schema], infer_schema([t])
([('m.lang', 'string'), ('m.year', 'double')], {'lang': 'mixed', 'year': 'float'})
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsr.errors import FilterError

__all__ = ["metadata_columns", "infer_schema", "column_name", "field_views", "FieldViews",
           "JSON_ENCODING", "FIELD_TYPES", "ID_FIELD", "METADATA_PREFIX"]

ID_FIELD = "_id"
METADATA_PREFIX = "m."
# Arrow field metadata marking an ``m.<key>`` column whose values are JSON text (mixed kinds).
JSON_ENCODING = {b"lsr.encoding": b"json"}
FIELD_TYPES = ("string", "int", "float", "bool", "null", "mixed")
INT64_RANGE = (-(2**63), 2**63 - 1)

Scalar = Union[str, int, float, bool, None]


def column_name(field: str) -> str:
    """The docs.parquet column a filter field reads: ``_id`` or ``m.<key>``."""
    return field if field == ID_FIELD else METADATA_PREFIX + field


def kind_of(value: Scalar) -> str:
    """The comparison kind of a non-null scalar; bool is not a number."""
    if isinstance(value, bool):
        return "bool"
    return "num" if isinstance(value, (int, float)) else "str"


@dataclass
class FieldViews:
    """One field of one table, split by kind: each array is null where the row holds another kind."""

    present: np.ndarray  # the row has a non-null scalar value
    str: pa.ChunkedArray | None = None
    num: pa.ChunkedArray | None = None
    bool: pa.ChunkedArray | None = None


def to_mask(result: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A pyarrow boolean result as a numpy bool array, null read as False."""
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def field_views(field: str, arrow_field: pa.Field | None, column: pa.ChunkedArray | None, n: int) -> FieldViews:
    if column is None or pa.types.is_null(column.type):
        return FieldViews(present=np.zeros(n, dtype=bool))
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    present = to_mask(pc.is_valid(column))
    t = column.type
    if _is_json(arrow_field):
        return _json_views(field, column, n)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return FieldViews(present=present, str=column)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        wide = pa.int64() if pa.types.is_integer(t) else pa.float64()
        return FieldViews(present=present, num=column if t == wide else pc.cast(column, wide))
    if pa.types.is_boolean(t):
        return FieldViews(present=present, bool=column)
    raise FilterError(f"filter field {field!r}: column {column_name(field)!r} has type {t}, which filters cannot read")


def _is_json(arrow_field: pa.Field | None) -> bool:
    meta = arrow_field.metadata if arrow_field is not None else None
    return bool(meta) and all(meta.get(k) == v for k, v in JSON_ENCODING.items())


def _json_views(field: str, column: pa.ChunkedArray, n: int) -> FieldViews:
    """Split a JSON-text column (one JSON scalar per row) into str / num / bool arrays, vectorised;
    only strings holding escapes are decoded by ``json.loads``."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise FilterError(f"filter field {field!r}: JSON-encoded column {column_name(field)!r} is not text")
    column = pc.cast(column, pa.string())
    null = pa.scalar(None, pa.string())
    is_str = pc.fill_null(pc.starts_with(column, '"'), False)
    is_true, is_false = pc.equal(column, "true"), pc.equal(column, "false")
    is_bool = pc.fill_null(pc.or_(is_true, is_false), False)
    is_null = pc.fill_null(pc.equal(column, "null"), True)
    is_num = pc.invert(pc.or_(pc.or_(is_str, is_bool), is_null))
    try:
        num = pc.cast(pc.if_else(is_num, column, null), pa.float64())
    except pa.ArrowInvalid as exc:
        raise FilterError(f"filter field {field!r}: column {column_name(field)!r} holds a value that is "
                          f"not a JSON scalar ({exc})") from None
    strings = pc.if_else(is_str, pc.utf8_slice_codeunits(column, 1, -1), null)
    escaped = to_mask(pc.and_(is_str, pc.match_substring(column, "\\")))
    if escaped.any():
        values = strings.to_pylist()
        raw = column.to_pylist()
        for i in np.flatnonzero(escaped):
            values[i] = json.loads(raw[i])
        strings = pa.chunked_array([pa.array(values, pa.string())])
    booleans = pc.if_else(is_bool, pc.fill_null(is_true, False), pa.scalar(None, pa.bool_()))
    present = ~to_mask(is_null)
    return FieldViews(present=present, str=strings, num=num, bool=booleans)


# ----------------------------------------------------------------------------------- writing and typing columns
_SCALAR_TYPES = {str, bool, int, float, type(None)}
# json.dumps of one scalar, without its per-call overhead (the same text: float repr, escaped str)
_JSON_SCALAR = {str: json.encoder.encode_basestring, bool: lambda v: "true" if v else "false",
                int: int.__repr__, float: float.__repr__}


def _plain(value: Any) -> Scalar:
    """A JSON scalar of one of the exact types str/bool/int/float, or None (non-scalars, NaN)."""
    for base in (bool, int, float, str):  # bool before int: True is an int in Python
        if isinstance(value, base):
            value = base(value)
            return None if base is float and not math.isfinite(value) else value
    return None


def _key_column(name: str, values: list) -> tuple[pa.Field, pa.Array]:
    types = set(map(type, values))
    if not types <= _SCALAR_TYPES:  # rare types (subclasses) and non-scalars: normalise first
        values = [_plain(v) for v in values]
        types = set(map(type, values))
    types.discard(type(None))
    if types == {int, float}:  # pyarrow refuses ints beyond 2**53 in a float64 array
        values = [float(v) if type(v) is int else v for v in values]
    arrow_type = {frozenset(): pa.null(), frozenset({str}): pa.string(), frozenset({bool}): pa.bool_(),
                  frozenset({int}): pa.int64(), frozenset({float}): pa.float64(),
                  frozenset({int, float}): pa.float64()}.get(frozenset(types))
    if arrow_type is not None:
        try:
            array = pa.array(values, arrow_type)
        except OverflowError:  # ints beyond 64 bits: kept exact as JSON text
            pass
        else:
            if arrow_type == pa.float64() and pc.all(pc.is_finite(array)).as_py() is False:
                array = pc.if_else(pc.is_finite(array), array, pa.scalar(None, pa.float64()))  # NaN, inf: missing
            return pa.field(name, arrow_type), array
    text = [None if v is None else _JSON_SCALAR[type(v)](v) for v in values]
    return pa.field(name, pa.string(), metadata=JSON_ENCODING), pa.array(text, pa.string())


def metadata_columns(metadatas: Sequence[Mapping[str, Any] | None]) -> pa.Table:
    """The ``m.<key>`` filter columns for documents' metadata (one dict per document, ``None`` =
    empty): one column per top-level key, sorted by key; str -> string, bool -> bool, int -> int64,
    int and float -> float64, only null -> null; other mixes of kinds (or ints beyond 64 bits) ->
    string of JSON text per value with Arrow field metadata ``JSON_ENCODING``. Missing keys,
    ``None``, NaN and non-scalar values (lists, objects) are null: missing for filters."""
    keys: set[str] = set()
    for i, metadata in enumerate(metadatas):
        if metadata is None:
            continue
        if not isinstance(metadata, Mapping):
            raise ValueError(f"document {i}: metadata is an object, got {type(metadata).__name__}")
        keys.update(metadata)
    empty: Mapping[str, Any] = {}
    rows = [m if m is not None else empty for m in metadatas]
    columns = [_key_column(column_name(key), [m.get(key) for m in rows]) for key in sorted(keys)]
    return pa.Table.from_arrays([c for _, c in columns], schema=pa.schema([f for f, _ in columns]))


def _arrow_field_type(field: pa.Field) -> str:
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if _is_json(field):
        return "mixed"
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    raise FilterError(f"column {field.name!r} has type {t}, which filters cannot read")


def _merge_types(a: str, b: str) -> str:
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    return "float" if {a, b} == {"int", "float"} else "mixed"


def infer_schema(tables: Iterable[pa.Table | pa.Schema]) -> dict[str, str]:
    """``{key: type}`` over the ``m.<key>`` columns of segments' tables or Arrow schemas (e.g.
    ``pyarrow.parquet.read_schema`` of each docs.parquet), a type one of ``FIELD_TYPES``; a key with
    different types in different segments gets the wider one (int + float -> float, else mixed)."""
    schema: dict[str, str] = {}
    for table in tables:
        arrow_schema = table if isinstance(table, pa.Schema) else table.schema
        for field in arrow_schema:
            if field.name.startswith(METADATA_PREFIX):
                key = field.name[len(METADATA_PREFIX):]
                ftype = _arrow_field_type(field)
                schema[key] = _merge_types(schema[key], ftype) if key in schema else ftype
    return schema
