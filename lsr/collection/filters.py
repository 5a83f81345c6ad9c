"""Metadata filters of a live collection: a small MongoDB-like language, compiled once, evaluated
per segment as a bool mask with pyarrow.compute (see docs/collections.md, "Filters").

>>> import pyarrow as pa
>>> f = compile_filter({"lang": "en", "year": {"$gte": 2020}})
>>> table = pa.table({"_id": ["a", "b", "c"], "m.lang": ["en", "en", "fr"], "m.year": [2019, 2021, 2022]})
>>> f.mask(table).tolist()
[False, True, False]
>>> compile_filter(["c", "a"]).mask(table).tolist()
[True, False, True]
>>> compile_filter({"year": {"$gt": "2020"}}, schema={"year": "int"})
Traceback (most recent call last):
...
lsr.errors.FilterError: filter field 'year' holds int values; $gt got a string ("2020")
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

__all__ = ["Filter", "compile_filter", "infer_schema", "metadata_columns", "column_name",
           "FIELD_TYPES", "JSON_ENCODING"]

ID_FIELD = "_id"
METADATA_PREFIX = "m."
# Arrow field metadata marking an ``m.<key>`` column whose values are JSON text (mixed kinds).
JSON_ENCODING = {b"lsr.encoding": b"json"}
FIELD_TYPES = ("string", "int", "float", "bool", "null", "mixed")
MAX_DEPTH = 32
_INT64 = (-(2**63), 2**63 - 1)
_RANGE = {"$gt": pc.greater, "$gte": pc.greater_equal, "$lt": pc.less, "$lte": pc.less_equal}
_FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$exists", "$not", *_RANGE)
_LOGICAL_OPS = ("$and", "$or", "$not")

Scalar = Union[str, int, float, bool, None]
# A compiled node: ("all",) | ("and", nodes) | ("or", nodes) | ("not", node) | ("cmp", field, op, operand)
Node = tuple


def column_name(field: str) -> str:
    """The docs.parquet column a filter field reads: ``_id`` or ``m.<key>``."""
    return field if field == ID_FIELD else METADATA_PREFIX + field


def _kind(value: Scalar) -> str:
    """The comparison kind of a non-null scalar; bool is not a number."""
    if isinstance(value, bool):
        return "bool"
    return "num" if isinstance(value, (int, float)) else "str"


def _describe(value: Any) -> str:
    name = {"bool": "a bool", "num": "a number", "str": "a string"}
    if value is None:
        return "null"
    if isinstance(value, (str, int, float, bool)):
        return f"{name[_kind(value)]} ({json.dumps(value)})"
    return f"a {type(value).__name__}"


# ----------------------------------------------------------------------------------- compiling
def compile_filter(spec: dict | list | str | Filter, schema: Mapping[str, str] | None = None) -> Filter:
    """Validate a filter and compile it.

    ``spec``: a filter object (``{"field": value}``, ``{"field": {"$op": operand}}``, ``{"$and" |
    "$or": [filters]}``, ``{"$not": filter}``; several keys are ANDed), a plain list of document ids
    (``{"_id": {"$in": ids}}``), its JSON text, or a compiled ``Filter``. ``schema`` maps metadata keys
    to one of ``FIELD_TYPES`` (``infer_schema`` makes it from the segments): unknown fields and operands
    of the wrong type are then refused too. Raises ``FilterError`` with a one-line message.
    """
    if isinstance(spec, Filter):
        spec = json.loads(spec.to_json())
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise FilterError(f"filter is not valid JSON: {exc}") from None
    if schema is not None:
        for key, ftype in schema.items():
            if ftype not in FIELD_TYPES:
                raise FilterError(f"schema field {key!r} has type {ftype!r}, not one of {', '.join(FIELD_TYPES)}")
    return Filter(_compile(spec, schema, 0))


def _compile(spec: Any, schema: Mapping[str, str] | None, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {MAX_DEPTH} levels")
    if isinstance(spec, (list, tuple)):
        return _field_node(ID_FIELD, "$in", list(spec), schema)
    if not isinstance(spec, Mapping):
        raise FilterError(f"a filter is an object or a list of ids, got {_describe(spec)}")
    nodes = []
    for key, value in spec.items():
        if not isinstance(key, str) or not key:
            raise FilterError(f"filter field names are non-empty strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise FilterError(f"{key} needs a non-empty list of filters, got {_describe(value)}")
            children = [_compile(child, schema, depth + 1) for child in value]
            nodes.append(_combine(key[1:], children))
        elif key == "$not":
            if not isinstance(value, (Mapping, list, tuple)):
                raise FilterError(f"$not needs a filter, got {_describe(value)}")
            nodes.append(("not", _compile(value, schema, depth + 1)))
        elif key.startswith("$"):
            raise FilterError(f"unknown operator {key!r} (logical operators: {', '.join(_LOGICAL_OPS)})")
        else:
            _check_field(key, schema)
            nodes.append(_field_ops(key, value, schema, depth))
    return _combine("and", nodes)


def _field_ops(field: str, value: Any, schema: Mapping[str, str] | None, depth: int) -> Node:
    """``{"field": value}`` or ``{"field": {"$op": operand, ...}}`` (several operators are ANDed)."""
    if not isinstance(value, Mapping):
        return _field_node(field, "$eq", value, schema)
    if not value:
        raise FilterError(f"filter field {field!r}: empty operator object")
    nodes = []
    for op, operand in value.items():
        if op == "$not":
            if not isinstance(operand, Mapping) or not operand:
                raise FilterError(f"filter field {field!r}: $not needs an operator object such as "
                                  f"{{\"$eq\": value}}, got {_describe(operand)}")
            if depth > MAX_DEPTH:
                raise FilterError(f"filter nested deeper than {MAX_DEPTH} levels")
            nodes.append(("not", _field_ops(field, operand, schema, depth + 1)))
        elif op in _FIELD_OPS:
            nodes.append(_field_node(field, op, operand, schema))
        elif isinstance(op, str) and op.startswith("$"):
            raise FilterError(f"filter field {field!r}: unknown operator {op!r} (field operators: "
                              f"{', '.join(_FIELD_OPS)})")
        else:
            raise FilterError(f"filter field {field!r}: values are strings, numbers, booleans or null "
                              f"(nested objects and dotted paths are not supported), got key {op!r}")
    return _combine("and", nodes)


def _field_node(field: str, op: str, operand: Any, schema: Mapping[str, str] | None) -> Node:
    if op == "$exists":
        if not isinstance(operand, bool):
            raise FilterError(f"filter field {field!r}: $exists needs true or false, got {_describe(operand)}")
        return ("cmp", field, op, operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple)):
            raise FilterError(f"filter field {field!r}: {op} needs a list, got {_describe(operand)}")
        values = [_check_value(field, op, v, schema) for v in operand]
        # canonical: one copy of each value, ordered by kind then value (1 and 1.0 stay distinct keys)
        unique = {json.dumps(v): v for v in values}
        return ("cmp", field, op, sorted(unique.values(), key=_sort_key))
    value = _check_value(field, op, operand, schema)
    if op in _RANGE and (value is None or isinstance(value, bool)):
        raise FilterError(f"filter field {field!r}: {op} needs a number or a string, got {_describe(value)}")
    return ("cmp", field, op, value)


def _sort_key(value: Scalar) -> tuple:
    if value is None:
        return (0, 0, "")
    return ({"bool": 1, "num": 2, "str": 3}[_kind(value)], value, json.dumps(value))


def _check_field(field: str, schema: Mapping[str, str] | None) -> None:
    if schema is None or field == ID_FIELD or field in schema:
        return
    known = sorted(schema)
    shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    raise FilterError(f"unknown filter field {field!r} (known: {shown or 'none'}, and _id)")


def _check_value(field: str, op: str, value: Any, schema: Mapping[str, str] | None) -> Scalar:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise FilterError(f"filter field {field!r}: {op} values are strings, numbers, booleans or null, "
                          f"got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"filter field {field!r}: {op} got a non-finite number ({value})")
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise FilterError(f"filter field {field!r}: {op} got an integer outside the 64-bit range")
    if value is None:
        if field == ID_FIELD:
            raise FilterError(f"filter field '_id': {op} values are document ids (strings), got null")
        return value
    ftype = "string" if field == ID_FIELD else (schema or {}).get(field, "mixed")
    expected = {"string": "str", "int": "num", "float": "num", "bool": "bool"}.get(ftype)
    if expected is not None and _kind(value) != expected:
        raise FilterError(f"filter field {field!r} holds {ftype} values; {op} got {_describe(value)}")
    if op in _RANGE and ftype == "bool":
        raise FilterError(f"filter field {field!r} holds bool values, which {op} cannot order")
    return value


def _combine(kind: str, nodes: list[Node]) -> Node:
    """AND/OR of nodes, flattened and in canonical order (both are commutative)."""
    flat: dict[str, Node] = {}
    for node in nodes:
        for child in (node[1] if node[0] == kind else [node]):
            if kind == "and" and child[0] == "all":
                continue
            flat[_dumps(_node_json(child))] = child
    if kind == "or" and any(child[0] == "all" for child in flat.values()):
        return ("all",)
    children = [flat[key] for key in sorted(flat)]
    if not children:
        return ("all",)
    return children[0] if len(children) == 1 else (kind, children)


def _node_json(node: Node) -> Any:
    if node[0] == "all":
        return {}
    if node[0] in ("and", "or"):
        return {"$" + node[0]: [_node_json(child) for child in node[1]]}
    if node[0] == "not":
        return {"$not": _node_json(node[1])}
    _, field, op, operand = node
    return {field: {op: operand}}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _node_fields(node: Node, out: set[str]) -> set[str]:
    if node[0] == "cmp":
        out.add(node[1])
    elif node[0] == "not":
        _node_fields(node[1], out)
    elif node[0] in ("and", "or"):
        for child in node[1]:
            _node_fields(child, out)
    return out


# ----------------------------------------------------------------------------------- evaluating
@dataclass
class _Views:
    """One field of one table, split by kind: each array is null where the row holds another kind."""

    present: np.ndarray  # the row has a non-null scalar value
    str: pa.ChunkedArray | None = None
    num: pa.ChunkedArray | None = None
    bool: pa.ChunkedArray | None = None


class Filter:
    """A compiled filter. ``mask(table)`` evaluates it over one segment's stored documents;
    ``fields`` and ``columns`` say what it reads; ``to_json()`` is canonical (equal for filters that
    differ only in key order, duplicate ``$in`` values or ``$and`` nesting), a cache key."""

    __slots__ = ("_node", "_json", "fields", "columns")

    def __init__(self, node: Node):
        self._node = node
        self._json = _dumps(_node_json(node))
        self.fields: tuple[str, ...] = tuple(sorted(_node_fields(node, set())))
        self.columns: tuple[str, ...] = tuple(column_name(f) for f in self.fields)

    @property
    def matches_all(self) -> bool:
        """True for the empty filter ``{}`` (every document passes)."""
        return self._node[0] == "all"

    def to_json(self) -> str:
        return self._json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other._json == self._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        return f"Filter({self._json})"

    def mask(self, table: pa.Table, ids: Sequence[str] | None = None) -> np.ndarray:
        """Bool array, one per row of ``table`` (``_id`` and ``m.<key>`` columns; an absent column
        means the field is missing in every row). ``ids``, when given, replaces the ``_id`` column."""
        n = table.num_rows
        if ids is not None and len(ids) != n:
            raise ValueError(f"mask: {len(ids)} ids for a table of {n} rows")
        cache: dict[str, _Views] = {}

        def views(field: str) -> _Views:
            if field not in cache:
                if field == ID_FIELD and ids is not None:
                    column: pa.ChunkedArray | None = pa.chunked_array([pa.array(list(ids), pa.string())])
                    arrow_field = pa.field(ID_FIELD, pa.string())
                elif field == ID_FIELD and ID_FIELD not in table.column_names:
                    raise ValueError("mask: the table has no _id column; pass ids")
                else:
                    name = column_name(field)
                    index = table.schema.get_field_index(name)
                    column = table.column(index) if index >= 0 else None
                    arrow_field = table.schema.field(index) if index >= 0 else None
                cache[field] = _field_views(field, arrow_field, column, n)
            return cache[field]

        return _evaluate(self._node, views, n)


def _evaluate(node: Node, views: Any, n: int) -> np.ndarray:
    kind = node[0]
    if kind == "all":
        return np.ones(n, dtype=bool)
    if kind == "not":
        return ~_evaluate(node[1], views, n)
    if kind in ("and", "or"):
        result = _evaluate(node[1][0], views, n)
        for child in node[1][1:]:
            if kind == "and":
                if not result.any():
                    break
                result &= _evaluate(child, views, n)
            else:
                result |= _evaluate(child, views, n)
        return result
    _, field, op, operand = node
    v = views(field)
    if op == "$exists":
        return v.present.copy() if operand else ~v.present
    if op in ("$eq", "$ne"):
        match = _equal_any(v, [operand], n)
        return ~match if op == "$ne" else match
    if op in ("$in", "$nin"):
        match = _equal_any(v, operand, n)
        return ~match if op == "$nin" else match
    column = getattr(v, _kind(operand))
    if column is None:
        return np.zeros(n, dtype=bool)
    if isinstance(operand, str):
        return _to_numpy(_RANGE[op](column, pa.scalar(operand, column.type)))
    if pa.types.is_integer(column.type):
        return _int_range(column, op, operand, n)
    return _to_numpy(_RANGE[op](column, pa.scalar(float(operand), pa.float64())))


def _int_range(column: pa.ChunkedArray, op: str, operand: int | float, n: int) -> np.ndarray:
    """An int64 column against a number, exactly (no cast of the column to float64): a fractional
    bound x becomes floor(x) (``> 2.5`` is ``> 2``, ``< 2.5`` is ``<= 2``)."""
    if isinstance(operand, float) and not operand.is_integer():
        bound = math.floor(operand)
        op = {"$gt": "$gt", "$gte": "$gt", "$lt": "$lte", "$lte": "$lte"}[op]
    else:
        bound = int(operand)
    if bound > _INT64[1] or bound < _INT64[0]:  # beyond every int64 value
        below = bound < _INT64[0]
        return _to_numpy(pc.is_valid(column)) if below == op.startswith("$g") else np.zeros(n, dtype=bool)
    return _to_numpy(_RANGE[op](column, pa.scalar(bound, pa.int64())))


def _to_numpy(result: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def _equal_any(v: _Views, values: Sequence[Scalar], n: int) -> np.ndarray:
    """Rows whose value equals one of ``values`` (null matches a missing value; 1 == 1.0; True != 1)."""
    match = ~v.present if any(value is None for value in values) else np.zeros(n, dtype=bool)
    for kind in ("str", "num", "bool"):
        column = getattr(v, kind)
        group = [value for value in values if value is not None and _kind(value) == kind]
        if column is None or not group:
            continue
        if kind == "num" and pa.types.is_integer(column.type):
            # an int column never equals a fractional number; integral floats compare as ints (exact)
            group = [int(x) for x in group if isinstance(x, int) or float(x).is_integer()]
            group = [x for x in group if _INT64[0] <= x <= _INT64[1]]
            if not group:
                continue
        elif kind == "num":
            group = [float(x) for x in group]
        if len(group) == 1:
            result = pc.equal(column, pa.scalar(group[0], column.type))
        else:
            result = pc.is_in(column, value_set=pa.array(group, column.type))
        match |= _to_numpy(result)
    return match


def _field_views(field: str, arrow_field: pa.Field | None, column: pa.ChunkedArray | None, n: int) -> _Views:
    if column is None or pa.types.is_null(column.type):
        return _Views(present=np.zeros(n, dtype=bool))
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    present = _to_numpy(pc.is_valid(column))
    t = column.type
    if _is_json(arrow_field):
        return _json_views(field, column, n)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _Views(present=present, str=column)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        wide = pa.int64() if pa.types.is_integer(t) else pa.float64()
        return _Views(present=present, num=column if t == wide else pc.cast(column, wide))
    if pa.types.is_boolean(t):
        return _Views(present=present, bool=column)
    raise FilterError(f"filter field {field!r}: column {column_name(field)!r} has type {t}, which filters cannot read")


def _is_json(arrow_field: pa.Field | None) -> bool:
    meta = arrow_field.metadata if arrow_field is not None else None
    return bool(meta) and all(meta.get(k) == v for k, v in JSON_ENCODING.items())


def _json_views(field: str, column: pa.ChunkedArray, n: int) -> _Views:
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
    escaped = _to_numpy(pc.and_(is_str, pc.match_substring(column, "\\")))
    if escaped.any():
        values = strings.to_pylist()
        raw = column.to_pylist()
        for i in np.flatnonzero(escaped):
            values[i] = json.loads(raw[i])
        strings = pa.chunked_array([pa.array(values, pa.string())])
    booleans = pc.if_else(is_bool, pc.fill_null(is_true, False), pa.scalar(None, pa.bool_()))
    present = ~_to_numpy(is_null)
    return _Views(present=present, str=strings, num=num, bool=booleans)


# ----------------------------------------------------------------------------------- columns and schema
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
