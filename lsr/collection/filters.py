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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lsr.collection.filter_columns import (FIELD_TYPES, ID_FIELD, INT64_RANGE, JSON_ENCODING, FieldViews, Scalar,
                                           column_name, field_views, infer_schema, kind_of, metadata_columns,
                                           to_mask)
from lsr.errors import FilterError

__all__ = ["Filter", "compile_filter", "infer_schema", "metadata_columns", "column_name",
           "FIELD_TYPES", "JSON_ENCODING"]

MAX_DEPTH = 32
_RANGE = {"$gt": pc.greater, "$gte": pc.greater_equal, "$lt": pc.less, "$lte": pc.less_equal}
_FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$exists", "$not", *_RANGE)
_LOGICAL_OPS = ("$and", "$or", "$not")

# A compiled node: ("all",) | ("and", nodes) | ("or", nodes) | ("not", node) | ("cmp", field, op, operand)
Node = tuple


def _describe(value: Any) -> str:
    name = {"bool": "a bool", "num": "a number", "str": "a string"}
    if value is None:
        return "null"
    if isinstance(value, (str, int, float, bool)):
        return f"{name[kind_of(value)]} ({json.dumps(value)})"
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
    return ({"bool": 1, "num": 2, "str": 3}[kind_of(value)], value, json.dumps(value))


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
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise FilterError(f"filter field {field!r}: {op} got an integer outside the 64-bit range")
    if value is None:
        if field == ID_FIELD:
            raise FilterError(f"filter field '_id': {op} values are document ids (strings), got null")
        return value
    ftype = "string" if field == ID_FIELD else (schema or {}).get(field, "mixed")
    expected = {"string": "str", "int": "num", "float": "num", "bool": "bool"}.get(ftype)
    if expected is not None and kind_of(value) != expected:
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
        cache: dict[str, FieldViews] = {}

        def views(field: str) -> FieldViews:
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
                cache[field] = field_views(field, arrow_field, column, n)
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
    column = getattr(v, kind_of(operand))
    if column is None:
        return np.zeros(n, dtype=bool)
    if isinstance(operand, str):
        return to_mask(_RANGE[op](column, pa.scalar(operand, column.type)))
    if pa.types.is_integer(column.type):
        return _int_range(column, op, operand, n)
    return to_mask(_RANGE[op](column, pa.scalar(float(operand), pa.float64())))


def _int_range(column: pa.ChunkedArray, op: str, operand: int | float, n: int) -> np.ndarray:
    """An int64 column against a number, exactly (no cast of the column to float64): a fractional
    bound x becomes floor(x) (``> 2.5`` is ``> 2``, ``< 2.5`` is ``<= 2``)."""
    if isinstance(operand, float) and not operand.is_integer():
        bound = math.floor(operand)
        op = {"$gt": "$gt", "$gte": "$gt", "$lt": "$lte", "$lte": "$lte"}[op]
    else:
        bound = int(operand)
    if bound > INT64_RANGE[1] or bound < INT64_RANGE[0]:  # beyond every int64 value
        below = bound < INT64_RANGE[0]
        return to_mask(pc.is_valid(column)) if below == op.startswith("$g") else np.zeros(n, dtype=bool)
    return to_mask(_RANGE[op](column, pa.scalar(bound, pa.int64())))


def _equal_any(v: FieldViews, values: Sequence[Scalar], n: int) -> np.ndarray:
    """Rows whose value equals one of ``values`` (null matches a missing value; 1 == 1.0; True != 1)."""
    match = ~v.present if any(value is None for value in values) else np.zeros(n, dtype=bool)
    for kind in ("str", "num", "bool"):
        column = getattr(v, kind)
        group = [value for value in values if value is not None and kind_of(value) == kind]
        if column is None or not group:
            continue
        if kind == "num" and pa.types.is_integer(column.type):
            # an int column never equals a fractional number; integral floats compare as ints (exact)
            group = [int(x) for x in group if isinstance(x, int) or float(x).is_integer()]
            group = [x for x in group if INT64_RANGE[0] <= x <= INT64_RANGE[1]]
            if not group:
                continue
        elif kind == "num":
            group = [float(x) for x in group]
        if len(group) == 1:
            result = pc.equal(column, pa.scalar(group[0], column.type))
        else:
            result = pc.is_in(column, value_set=pa.array(group, column.type))
        match |= to_mask(result)
    return match

