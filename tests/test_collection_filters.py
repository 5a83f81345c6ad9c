"""Collection metadata filters against a plain-Python evaluator over the metadata dicts."""
from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lsr.collection.filters import JSON_ENCODING, Filter, compile_filter, infer_schema, metadata_columns
from lsr.errors import FilterError


# ----------------------------------------------------------------------------- reference evaluator
def ref_value(doc, field):
    if field == "_id":
        return doc["_id"]
    value = (doc["metadata"] or {}).get(field)
    if isinstance(value, (list, dict)) or (isinstance(value, float) and not math.isfinite(value)):
        return None  # non-scalar values are not filterable: missing
    return value


def kind(value):
    if isinstance(value, bool):
        return "bool"
    return "num" if isinstance(value, (int, float)) else "str"


def ref_eq(value, operand):
    if operand is None:
        return value is None
    return value is not None and kind(value) == kind(operand) and value == operand


def ref_op(value, op, operand):
    if op == "$eq":
        return ref_eq(value, operand)
    if op == "$ne":
        return not ref_eq(value, operand)
    if op == "$in":
        return any(ref_eq(value, x) for x in operand)
    if op == "$nin":
        return not any(ref_eq(value, x) for x in operand)
    if op == "$exists":
        return (value is not None) == operand
    if op == "$not":
        return not all(ref_op(value, o, x) for o, x in operand.items())
    if value is None or kind(value) != kind(operand):
        return False
    return {"$gt": value > operand, "$gte": value >= operand,
            "$lt": value < operand, "$lte": value <= operand}[op]


def ref_match(spec, doc):
    if isinstance(spec, list):
        return doc["_id"] in spec
    for key, operand in spec.items():
        if key == "$and":
            ok = all(ref_match(s, doc) for s in operand)
        elif key == "$or":
            ok = any(ref_match(s, doc) for s in operand)
        elif key == "$not":
            ok = not ref_match(operand, doc)
        elif isinstance(operand, dict):
            ok = all(ref_op(ref_value(doc, key), op, x) for op, x in operand.items())
        else:
            ok = ref_eq(ref_value(doc, key), operand)
        if not ok:
            return False
    return True


# ----------------------------------------------------------------------------- random data
STRINGS = ["a", "b", "c", "ä", 'x"y', "x\\y", "", "2021-03-04", "2021-11-30T10:00:00Z", "2020-01-01"]
POOLS = {
    "str": lambda r: r.choice(STRINGS),
    "int": lambda r: r.randint(-3, 5) if r.random() < 0.8 else r.choice([2**62, -(2**62)]),
    "float": lambda r: r.choice([0.5, 1.0, 2.0, -1.5, 3.25, 1e300]),
    "bool": lambda r: r.random() < 0.5,
    "none": lambda r: None,
    "nested": lambda r: r.choice([[1, 2], {"a": 1}, []]),
}
KEYS = ["tenant", "year", "score", "flag", "mix", "odd"]


def random_docs(r: random.Random, n: int) -> list[dict]:
    kinds = {key: r.sample(list(POOLS), r.randint(1, 3)) for key in KEYS}
    kinds["tenant"], kinds["year"] = ["str", "none"], ["int"]
    docs = []
    for i in range(n):
        metadata = {key: POOLS[r.choice(kinds[key])](r) for key in KEYS if r.random() < 0.8}
        docs.append({"_id": f"d{i}", "metadata": metadata if metadata or r.random() < 0.5 else None})
    return docs


SEEN: dict[str, list] = {}  # field -> values the current documents hold (set by the test)


def random_value(r: random.Random, field: str = "", orderable: bool = False):
    seen = [v for v in SEEN.get(field, []) if not orderable or (v is not None and not isinstance(v, bool))]
    if seen and r.random() < 0.6:  # mostly values that occur, so that filters select some documents
        value = r.choice(seen)
        if kind(value) == "num" and value is not None and r.random() < 0.4:
            value += r.choice([-0.5, 0.5])  # just off a stored number: the bounds of int columns
        return value
    kinds = ["str", "int", "float"] + ([] if orderable else ["bool", "none"])
    return POOLS[r.choice(kinds)](r)


def random_field_ops(r: random.Random, field: str, depth: int):
    ids = field == "_id"
    value = (lambda: f"d{r.randint(0, 80)}") if ids else (lambda: random_value(r, field))
    op = r.choice(["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$not", "plain"])
    if op == "plain":
        return value()
    if op in ("$in", "$nin"):
        return {op: [value() for _ in range(r.randint(0, 4))]}
    if op == "$exists":
        return {op: r.random() < 0.5}
    if op == "$not":
        inner = random_field_ops(r, field, depth + 1)
        return {op: inner if isinstance(inner, dict) else {"$eq": inner}}
    if op.startswith("$g") or op.startswith("$l"):
        operand = f"d{r.randint(0, 80)}" if ids else random_value(r, field, orderable=True)
        ops = {op: operand}
        if r.random() < 0.3:  # a range: two bounds on one field
            ops["$lt" if op.startswith("$g") else "$gt"] = operand if ids else random_value(r, field, orderable=True)
        return ops
    return {op: value()}


def random_filter(r: random.Random, depth: int = 0):
    choice = r.random() if depth < 3 else 0.0
    if choice < 0.55:
        fields = r.sample(KEYS + ["_id", "absent"], r.randint(1, 2))
        return {f: random_field_ops(r, f, depth) for f in fields}
    if choice < 0.8:
        return {r.choice(["$and", "$or"]): [random_filter(r, depth + 1) for _ in range(r.randint(1, 3))]}
    if choice < 0.92:
        return {"$not": random_filter(r, depth + 1)}
    return [f"d{r.randint(0, 80)}" for _ in range(r.randint(0, 5))]


def table_of(docs):
    columns = metadata_columns([d["metadata"] for d in docs])
    table = pa.table({"_id": [d["_id"] for d in docs]})
    for field, column in zip(columns.schema, columns.columns):
        table = table.append_column(field, column)
    return table


def shuffled(spec, r: random.Random):
    """The same filter with every object's keys in another order."""
    if isinstance(spec, dict):
        items = list(spec.items())
        r.shuffle(items)
        return {k: shuffled(v, r) for k, v in items}
    if isinstance(spec, list):
        return [shuffled(v, r) for v in spec]
    return spec


# ----------------------------------------------------------------------------- property tests
@pytest.mark.parametrize("seed", range(6))
def test_random_filters_match_reference(seed, tmp_path):
    r = random.Random(seed)
    docs = random_docs(r, r.randint(40, 120))
    SEEN.clear()
    SEEN.update({key: [ref_value(d, key) for d in docs] for key in KEYS})
    table = table_of(docs)
    pq.write_table(table, tmp_path / "docs.parquet")
    from_parquet = pq.read_table(tmp_path / "docs.parquet")
    # the same documents as segments of their own: each gets its own column types
    cut = sorted(r.sample(range(1, len(docs)), 3))
    segments = [table_of(docs[a:b]) for a, b in zip([0, *cut], [*cut, len(docs)])]
    no_ids = table.drop_columns(["_id"])
    ids = [d["_id"] for d in docs]
    for _ in range(120):
        spec = random_filter(r)
        expected = np.array([ref_match(spec, d) for d in docs])
        f = compile_filter(copy.deepcopy(spec))
        got = f.mask(table)
        assert got.dtype == bool and got.shape == (len(docs),)
        assert np.array_equal(got, expected), spec
        assert np.array_equal(f.mask(from_parquet), expected), spec
        assert np.array_equal(np.concatenate([f.mask(s) for s in segments]), expected), spec
        assert np.array_equal(f.mask(no_ids, ids=ids), expected), spec
        # canonical JSON: key order does not matter, and it compiles back to the same filter
        again = compile_filter(shuffled(spec, r))
        assert again.to_json() == f.to_json() and again == f and hash(again) == hash(f)
        back = compile_filter(json.loads(f.to_json()))
        assert back.to_json() == f.to_json()
        assert np.array_equal(back.mask(table), expected), spec
        read = {"_id" if c == "_id" else c[2:] for c in f.columns}
        assert set(f.fields) == read


def test_masks_on_hand_made_arrow_columns():
    """Columns pyarrow infers or a Parquet reader returns (int32, large_string, dictionary, absent)."""
    years = [2019, None, 2021, 2022, 2020]
    langs = ["en", "fr", None, "en", "de"]
    docs = [{"_id": f"d{i}", "metadata": {"year": y, "lang": g}} for i, (y, g) in enumerate(zip(years, langs))]
    tables = [
        pa.table({"_id": [d["_id"] for d in docs], "m.year": years, "m.lang": langs}),
        pa.table({"_id": pa.array([d["_id"] for d in docs], pa.large_string()),
                  "m.year": pa.array(years, pa.int32()),
                  "m.lang": pa.array(langs, pa.large_string()).dictionary_encode()}),
        pa.table({"_id": [d["_id"] for d in docs], "m.year": pa.array(years, pa.float32()),
                  "m.lang": pa.chunked_array([langs[:2], langs[2:]])}),
    ]
    specs = [{"year": 2021}, {"year": {"$in": [2019, 2022.0, 2020.5]}}, {"year": {"$gt": 2019.5, "$lte": 2021}},
             {"lang": {"$in": ["en", "de"]}}, {"lang": {"$ne": "en"}}, {"lang": None}, {"year": {"$exists": True}},
             {"$or": [{"lang": "fr"}, {"year": {"$lt": 2020}}]}, {"_id": {"$gte": "d3"}}, ["d4", "d0"],
             {"absent": {"$ne": 1}}, {"absent": 1}, {}]
    for spec in specs:
        expected = np.array([ref_match(spec, d) for d in docs])
        for table in tables:
            assert np.array_equal(compile_filter(spec).mask(table), expected), (spec, table.schema)
    assert compile_filter({}).matches_all and not compile_filter({"year": 1}).matches_all


def test_iso_dates_compare_as_strings():
    dates = ["2021-03-04", "2021-11-30T10:00:00Z", "2020-12-31", "2022-01-01T00:00:00+00:00"]
    table = pa.table({"_id": ["a", "b", "c", "d"], "m.date": dates})
    got = compile_filter({"date": {"$gte": "2021-01-01", "$lt": "2022"}}).mask(table)
    assert got.tolist() == ["2021-01-01" <= d < "2022" for d in dates] == [True, True, False, False]


def test_metadata_columns_types_and_json_encoding(tmp_path):
    metadatas = [{"s": "x", "i": 1, "f": 1, "b": True, "n": None, "m": "1", "l": [1]},
                 {"s": "y", "i": 2, "f": 2.5, "b": False, "m": 1, "l": {"a": 1}},
                 None,
                 {"m": True, "big": 2**70}]
    columns = metadata_columns(metadatas)
    types = {field.name: field.type for field in columns.schema}
    assert types == {"m.b": pa.bool_(), "m.big": pa.string(), "m.f": pa.float64(),
                     "m.i": pa.int64(), "m.l": pa.null(), "m.m": pa.string(), "m.n": pa.null(), "m.s": pa.string()}
    assert columns.schema.field("m.m").metadata == JSON_ENCODING
    assert columns.schema.field("m.big").metadata == JSON_ENCODING
    assert columns.column("m.m").to_pylist() == ['"1"', "1", None, "true"]
    assert columns.column("m.f").to_pylist() == [1.0, 2.5, None, None]
    assert columns.num_rows == 4
    path = tmp_path / "docs.parquet"
    pq.write_table(columns, path)
    assert pq.read_schema(path).field("m.m").metadata == JSON_ENCODING  # the marker survives Parquet
    with pytest.raises(ValueError, match="document 1: metadata is an object"):
        metadata_columns([{}, ["a"]])


def test_infer_schema_merges_segments(tmp_path):
    a = metadata_columns([{"year": 2020, "lang": "en", "flag": True, "x": None}])
    b = metadata_columns([{"year": 2.5, "lang": 3, "flag": True, "x": "s", "new": "n"}])
    pq.write_table(b, tmp_path / "b.parquet")
    schema = infer_schema([a, pq.read_schema(tmp_path / "b.parquet")])
    assert schema == {"year": "float", "lang": "mixed", "flag": "bool", "x": "string", "new": "string"}
    assert infer_schema([a]) == {"year": "int", "lang": "string", "flag": "bool", "x": "null"}
    f = compile_filter({"year": {"$gt": 1}, "lang": 3, "x": "s"}, schema=schema)
    assert f.fields == ("lang", "x", "year") and f.columns == ("m.lang", "m.x", "m.year")


def test_canonical_json():
    f = compile_filter({"b": {"$in": [3, 1, 3, "z", None, True]}, "a": 1})
    assert f.to_json() == '{"$and":[{"a":{"$eq":1}},{"b":{"$in":[null,true,1,3,"z"]}}]}'
    nested = compile_filter({"$and": [{"$and": [{"a": 1}]}, {"b": {"$in": [1, 3, "z", True, None]}}]})
    assert nested.to_json() == f.to_json()
    assert compile_filter(["b", "a", "b"]).to_json() == '{"_id":{"$in":["a","b"]}}'
    assert compile_filter('{"a": 1}') == compile_filter({"a": {"$eq": 1}})
    assert compile_filter(f) == f
    assert compile_filter({}).to_json() == "{}"


# ----------------------------------------------------------------------------- errors
SCHEMA = {"year": "int", "lang": "string", "flag": "bool", "score": "float", "any": "mixed", "nothing": "null"}
ERRORS = [
    ({"$nor": [{"a": 1}]}, None, "unknown operator '$nor'"),
    ({"a": {"$regex": "x"}}, None, "filter field 'a': unknown operator '$regex'"),
    ({"a": {"$in": "x"}}, None, "filter field 'a': $in needs a list, got a string"),
    ({"a": {"$nin": 3}}, None, "filter field 'a': $nin needs a list, got a number"),
    ({"$and": []}, None, "$and needs a non-empty list of filters"),
    ({"$or": {"a": 1}}, None, "$or needs a non-empty list of filters, got a dict"),
    ({"$and": [3]}, None, "a filter is an object or a list of ids, got a number"),
    ({"$not": 3}, None, "$not needs a filter, got a number"),
    ({"a": {"$not": 3}}, None, "filter field 'a': $not needs an operator object"),
    ({"a": {"$exists": 1}}, None, "filter field 'a': $exists needs true or false, got a number"),
    ({"a": {"$gt": True}}, None, "filter field 'a': $gt needs a number or a string, got a bool"),
    ({"a": {"$lte": None}}, None, "filter field 'a': $lte needs a number or a string, got null"),
    ({"a": [1, 2]}, None, "filter field 'a': $eq values are strings, numbers, booleans or null, got a list"),
    ({"a": {"$in": [{"b": 1}]}}, None, "filter field 'a': $in values are strings, numbers, booleans or null"),
    ({"a": {"b": 1}}, None, "filter field 'a': values are strings, numbers, booleans or null"),
    ({"a": {}}, None, "filter field 'a': empty operator object"),
    ({"a": float("nan")}, None, "filter field 'a': $eq got a non-finite number"),
    ({"a": 2**64}, None, "filter field 'a': $eq got an integer outside the 64-bit range"),
    ({"": 1}, None, "filter field names are non-empty strings"),
    ("{bad json", None, "filter is not valid JSON"),
    (3, None, "a filter is an object or a list of ids, got a number"),
    (["a", 3], None, "filter field '_id' holds string values; $in got a number (3)"),
    ({"_id": None}, None, "filter field '_id': $eq values are document ids (strings), got null"),
    ({"_id": {"$gt": 1}}, None, "filter field '_id' holds string values; $gt got a number"),
    ({"yaer": 2020}, SCHEMA, "unknown filter field 'yaer' (known: any, flag, lang, nothing, score, year, and _id)"),
    ({"$or": [{"lang": "en"}, {"tenant": "x"}]}, SCHEMA, "unknown filter field 'tenant'"),
    ({"lang": {"$gt": 3}}, SCHEMA, "filter field 'lang' holds string values; $gt got a number (3)"),
    ({"year": {"$gt": "2020"}}, SCHEMA, 'filter field \'year\' holds int values; $gt got a string ("2020")'),
    ({"year": {"$in": [2020, "2021"]}}, SCHEMA, "filter field 'year' holds int values; $in got a string"),
    ({"score": True}, SCHEMA, "filter field 'score' holds float values; $eq got a bool (true)"),
    ({"flag": 1}, SCHEMA, "filter field 'flag' holds bool values; $eq got a number (1)"),
    ({"flag": {"$gte": False}}, SCHEMA, "filter field 'flag' holds bool values, which $gte cannot order"),
    ({"flag": {"$gt": 0}}, SCHEMA, "filter field 'flag' holds bool values; $gt got a number (0)"),
    ({"a": 1}, {"a": "date"}, "schema field 'a' has type 'date'"),
]


@pytest.mark.parametrize(("spec", "schema", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_field_and_operator(spec, schema, message):
    with pytest.raises(FilterError) as info:
        compile_filter(spec, schema=schema)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_schema_accepts_well_typed_filters():
    for spec in [{"year": {"$gte": 2020.5}}, {"score": 3}, {"lang": {"$lt": "m"}}, {"flag": False},
                 {"any": {"$gt": "x"}}, {"any": True}, {"nothing": 3}, {"year": None}, {"lang": {"$in": [None, "en"]}},
                 {"_id": {"$in": ["a"]}}, {"year": {"$exists": False}}]:
        assert isinstance(compile_filter(spec, schema=SCHEMA), Filter)


def test_deep_nesting_and_bad_tables_are_refused():
    spec: dict = {"a": 1}
    for _ in range(40):
        spec = {"$not": spec}
    with pytest.raises(FilterError, match="nested deeper than"):
        compile_filter(spec)
    table = pa.table({"m.when": pa.array([1, 2], pa.timestamp("s"))})
    with pytest.raises(FilterError, match="field 'when': column 'm.when' has type timestamp"):
        compile_filter({"when": 1}).mask(table)
    with pytest.raises(ValueError, match="no _id column"):
        compile_filter(["a"]).mask(table)
    with pytest.raises(ValueError, match="3 ids for a table of 2 rows"):
        compile_filter(["a"]).mask(table, ids=["a", "b", "c"])


def test_json_column_written_by_hand():
    """A JSON-marked column may hold the text null (missing) and escaped strings."""
    values = [1, "a", None, 'q"\\é', True, 2.5, "1", None]
    text = ["1", '"a"', "null", json.dumps('q"\\é'), "true", "2.5", '"1"', None]
    field = pa.field("m.v", pa.string(), metadata=JSON_ENCODING)
    table = pa.table({"_id": [f"d{i}" for i in range(len(values))]}).append_column(field, pa.array(text))
    docs = [{"_id": f"d{i}", "metadata": {"v": v}} for i, v in enumerate(values)]
    for spec in [{"v": None}, {"v": {"$exists": True}}, {"v": 1}, {"v": "1"}, {"v": 'q"\\é'}, {"v": True},
                 {"v": {"$gt": 0}}, {"v": {"$lt": "b"}}, {"v": {"$ne": "a"}}, {"v": {"$in": [2.5, "a", False]}}]:
        expected = [ref_match(spec, d) for d in docs]
        assert compile_filter(spec).mask(table).tolist() == expected, spec
    assert infer_schema([table]) == {"v": "mixed"}


def test_mask_cache_is_bounded_by_bytes_in_lru_order(tmp_path):
    """The per-segment mask cache never holds more than its byte bound, drops the least recently
    used masks first, never caches a mask larger than the bound, and returns correct masks."""
    from collections import OrderedDict

    from lsr.collection import Collection
    from lsr.collection.segments import OpenSegment
    from lsr.collection.snapshot import MASK_CACHE_BYTES, MaskCache

    r = random.Random(11)
    bound = 3000
    sizes = [200, 900, 40, 1500, bound + 1]  # the last one's masks are larger than the bound
    segments, seg_docs = [], []
    for j, n in enumerate(sizes):
        docs = [dict(d, _id=f"s{j}-{d['_id']}") for d in random_docs(r, n)]
        SEEN.clear()
        SEEN.update({key: [ref_value(d, key) for d in docs] for key in KEYS})
        table = table_of(docs)
        segments.append(OpenSegment(f"seg_{j:08d}", n, None, table, np.array([d["_id"] for d in docs]),
                                    f"{j:064x}"))
        seg_docs.append(docs)
    specs = [random_filter(r) for _ in range(8)]
    cache, model = MaskCache(max_bytes=bound), OrderedDict()  # model: key -> bytes, in LRU order
    for _ in range(400):
        j, spec = r.randrange(len(sizes)), r.randrange(len(specs))
        compiled = compile_filter(specs[spec])
        mask = cache.get(segments[j], compiled)
        assert np.array_equal(mask, [ref_match(specs[spec], d) for d in seg_docs[j]]), specs[spec]
        key = (j, compiled.to_json())
        if key in model:
            model.move_to_end(key)
        elif sizes[j] <= bound:
            model[key] = sizes[j]
            while sum(model.values()) > bound:
                model.popitem(last=False)
        assert cache.nbytes == sum(model.values()) <= bound
        assert [(int(k[0][4:]), k[2]) for k in cache._items] == list(model)
        assert cache.nbytes == sum(m.nbytes for m in cache._items.values())
        if sizes[j] <= bound:  # a hit is the cached array itself
            assert cache.get(segments[j], compiled) is mask
    assert len(cache) >= 2  # the bound held several masks, not one
    assert MASK_CACHE_BYTES == 64 << 20
    with Collection.create(tmp_path / "c", "bm25") as col:
        assert col._masks.max_bytes == MASK_CACHE_BYTES
