"""RAG-framework adapters (lsr.adapters) through each framework's own API, over a live BM25
collection that was added to twice, deleted from and upserted into.

Reference for every search: a fresh ``lsr.BM25Retriever`` over the surviving documents (in the
collection's order), scored against all of them (BM25's statistics are the live documents'), then
filtered in Python and cut to k. Filter translations are checked against the frameworks' own
in-memory filter evaluators on seeded random filters.
"""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest

import lsr
from lsr.errors import FilterError

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
pytest.importorskip("haystack")

WORDS = ("heart disease blood pressure cancer cell gene protein virus vaccine trial dose risk "
         "patient brain sleep diet sugar insulin lung smoke").split()
TENANTS = ("a", "b", "c")
QUERIES = ["heart disease risk", "cancer cell gene", "vaccine trial dose", "sleep diet sugar"]


def _doc(rng: random.Random, i: int) -> dict:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
    metadata: dict = {"year": rng.randint(2015, 2024), "n": i}
    if rng.random() < 0.85:  # some documents lack the tenant key
        metadata["tenant"] = rng.choice(TENANTS)
    if rng.random() < 0.3:
        metadata["tags"] = [rng.choice(WORDS)]  # a list: stored, not filterable
    doc = {"_id": f"d{i:03d}", "text": " ".join(words), "metadata": metadata}
    if rng.random() < 0.5:
        doc["title"] = rng.choice(WORDS).capitalize()
    return doc


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(collection, surviving documents in collection order)."""
    rng = random.Random(12)
    first = [_doc(rng, i) for i in range(40)]
    second = [_doc(rng, i) for i in range(40, 70)]
    path = tmp_path_factory.mktemp("adapters") / "coll"
    coll = lsr.Collection.create(path, "bm25")
    coll.add(first)
    coll.add(second)
    coll.delete(["d007"])
    replaced = dict(_doc(rng, 12), _id="d012")  # an update: delete plus add, so it moves to the end
    coll.upsert([replaced])
    survivors = [d for d in first + second if d["_id"] not in ("d007", "d012")] + [replaced]
    yield coll, survivors
    coll.close()


def _python_match(doc: dict, tenant: str | None = None, min_year: int | None = None) -> bool:
    m = doc["metadata"]
    return (tenant is None or m.get("tenant") == tenant) and (min_year is None or m["year"] >= min_year)


def _expected(survivors: list[dict], query: str, k: int, **match) -> list[tuple[str, float]]:
    """Brute force: a fresh BM25 over the survivors, every document scored, filtered, cut to k."""
    fresh = lsr.BM25Retriever()
    fresh.index([d["_id"] for d in survivors],
                [f"{d['title']} {d['text']}" if d.get("title") else d["text"] for d in survivors])
    hits = fresh.search([query], k=len(survivors)).hits(0)
    by_id = {d["_id"]: d for d in survivors}
    return [(i, s) for i, s in hits if _python_match(by_id[i], **match)][:k]


def _check(got: list[tuple[str, str, dict, float]], expected: list[tuple[str, float]],
           survivors: list[dict], search_hits: list[dict]) -> None:
    """got: (id, text, metadata, score) per hit, as the framework returned them."""
    assert expected, "a test query must match something"
    by_id = {d["_id"]: d for d in survivors}
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[3] for g in got], [e[1] for e in expected], rtol=1e-5)
    assert [g[3] for g in got] == [float(h["score"]) for h in search_hits]  # what Collection.search says
    for doc_id, text, metadata, _ in got:
        doc = by_id[doc_id]
        assert text == doc["text"]
        want = dict(doc["metadata"], **({"title": doc["title"]} if doc.get("title") else {}))
        assert metadata == want


def _collection_hits(coll, query: str, k: int, filter) -> list[dict]:
    return coll.search([query], k=k, filter=filter, fields=["text", "title", "metadata"]).documents(0)


# ------------------------------------------------------------------------------------- LangChain
def test_langchain_invoke_with_filter(live):
    from lsr.adapters.langchain import LsrRetriever

    coll, survivors = live
    retriever = LsrRetriever(collection=coll, k=3, filter={"tenant": "a"})
    for query in QUERIES:
        docs = retriever.invoke(query)
        got = [(d.id, d.page_content, {k: v for k, v in d.metadata.items() if k not in ("_id", "score")},
                d.metadata["score"]) for d in docs]
        assert all(d.metadata["_id"] == d.id for d in docs)
        _check(got, _expected(survivors, query, 3, tenant="a"), survivors,
               _collection_hits(coll, query, 3, {"tenant": "a"}))
    # per call: k and filter replace the retriever's own; {} drops the filter
    query = QUERIES[0]
    docs = retriever.invoke(query, k=5, filter={"tenant": "b", "year": {"$gte": 2019}})
    got = [(d.id, d.page_content, {k: v for k, v in d.metadata.items() if k not in ("_id", "score")},
            d.metadata["score"]) for d in docs]
    _check(got, _expected(survivors, query, 5, tenant="b", min_year=2019), survivors,
           _collection_hits(coll, query, 5, {"tenant": "b", "year": {"$gte": 2019}}))
    assert [d.id for d in retriever.invoke(query, filter={})] == [i for i, _ in _expected(survivors, query, 3)]
    assert "d007" not in {d.id for d in retriever.invoke("heart", k=100, filter={})}


def test_langchain_path_and_configurable_filter(live):
    from langchain_core.runnables import ConfigurableField

    from lsr.adapters.langchain import LsrRetriever

    coll, survivors = live
    by_path = LsrRetriever(collection=str(coll.path), k=4)  # opened read-only
    assert [d.id for d in by_path.invoke(QUERIES[1])] == [i for i, _ in _expected(survivors, QUERIES[1], 4)]
    configurable = LsrRetriever(collection=coll, k=4).configurable_fields(
        filter=ConfigurableField(id="lsr_filter"))
    docs = configurable.invoke(QUERIES[1], config={"configurable": {"lsr_filter": {"tenant": "c"}}})
    assert [d.id for d in docs] == [i for i, _ in _expected(survivors, QUERIES[1], 4, tenant="c")]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        LsrRetriever(collection=coll, k=0)


def test_reader_by_path_sees_new_commits(tmp_path):
    from lsr.adapters.langchain import LsrRetriever

    with lsr.Collection.create(tmp_path / "c", "bm25") as writer:
        writer.add([{"_id": "x", "text": "heart disease"}, {"_id": "y", "text": "stock markets"}])
        reader = LsrRetriever(collection=tmp_path / "c", k=10)  # opened read-only, refreshed per query
        assert reader.collection.readonly and [d.id for d in reader.invoke("heart")] == ["x"]
        writer.add([{"_id": "z", "text": "heart attack", "metadata": {"tenant": "a"}}])
        writer.delete(["x"])
        docs = reader.invoke("heart")
        assert [(d.id, d.page_content, d.metadata["tenant"]) for d in docs] == [("z", "heart attack", "a")]
        reader.collection.close()


# ------------------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_retrieve_with_metadata_filters(live):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters

    from lsr.adapters.llamaindex import LsrRetriever

    coll, survivors = live
    filters = MetadataFilters(filters=[MetadataFilter(key="tenant", value="a"),
                                       MetadataFilter(key="year", value=2019, operator=FilterOperator.GTE)])
    retriever = LsrRetriever(coll, similarity_top_k=4, filters=filters)
    for query in QUERIES:
        nodes = retriever.retrieve(query)
        assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
        got = [(n.node.id_, n.node.text, n.node.metadata, n.score) for n in nodes]
        _check(got, _expected(survivors, query, 4, tenant="a", min_year=2019), survivors,
               _collection_hits(coll, query, 4, {"tenant": "a", "year": {"$gte": 2019}}))
    retriever.filters = {"tenant": "b"}  # a raw lsr filter works too
    nodes = retriever.retrieve(QUERIES[2])
    assert [n.node.id_ for n in nodes] == [i for i, _ in _expected(survivors, QUERIES[2], 4, tenant="b")]
    with pytest.raises(FilterError, match="text_match"):
        LsrRetriever(coll, filters=MetadataFilters(filters=[
            MetadataFilter(key="tenant", value="a", operator=FilterOperator.TEXT_MATCH)]))


# ------------------------------------------------------------------------------------- Haystack
def test_haystack_pipeline_with_filters_and_serialisation(live):
    from haystack import Document, Pipeline

    from lsr.adapters.haystack import LsrRetriever

    coll, survivors = live
    pipe = Pipeline()
    pipe.add_component("retriever", LsrRetriever(coll, top_k=3))
    filters = {"operator": "AND", "conditions": [{"field": "meta.tenant", "operator": "==", "value": "a"},
                                                 {"field": "meta.year", "operator": ">=", "value": 2018}]}
    for query in QUERIES:
        docs = pipe.run({"retriever": {"query": query, "filters": filters}})["retriever"]["documents"]
        assert all(isinstance(d, Document) for d in docs)
        got = [(d.id, d.content, d.meta, d.score) for d in docs]
        _check(got, _expected(survivors, query, 3, tenant="a", min_year=2018), survivors,
               _collection_hits(coll, query, 3, {"tenant": "a", "year": {"$gte": 2018}}))
    # the pipeline serialises (the collection's path) and loads in this process
    text = pipe.dumps()
    assert str(coll.path) in text
    loaded = Pipeline.loads(text, allowed_modules=["lsr.adapters.haystack"])
    query = QUERIES[3]
    out = loaded.run({"retriever": {"query": query, "top_k": 5,
                                    "filters": {"field": "meta.tenant", "operator": "in", "value": ["b", "c"]}}})
    expected = [e for e in _expected(survivors, query, len(survivors)) if
                {d["_id"]: d for d in survivors}[e[0]]["metadata"].get("tenant") in ("b", "c")][:5]
    assert [(d.id, pytest.approx(d.score, rel=1e-5)) for d in out["retriever"]["documents"]] == expected
    assert loaded.run({"retriever": {"query": query, "top_k": 0}})["retriever"]["documents"] == []


def test_haystack_filter_policy(live):
    from haystack.document_stores.types import FilterPolicy

    from lsr.adapters.haystack import LsrRetriever

    coll, survivors = live
    init = {"field": "meta.tenant", "operator": "==", "value": "a"}
    runtime = {"field": "meta.year", "operator": ">=", "value": 2020}
    query = QUERIES[0]
    replace = LsrRetriever(coll, top_k=4, filters=init)
    merge = LsrRetriever(coll, top_k=4, filters=init, filter_policy=FilterPolicy.MERGE)
    assert [d.id for d in replace.run(query)["documents"]] == [i for i, _ in _expected(survivors, query, 4, tenant="a")]
    assert ([d.id for d in replace.run(query, filters=runtime)["documents"]]
            == [i for i, _ in _expected(survivors, query, 4, min_year=2020)])
    assert ([d.id for d in merge.run(query, filters=runtime)["documents"]]
            == [i for i, _ in _expected(survivors, query, 4, tenant="a", min_year=2020)])
    assert LsrRetriever.from_dict(merge.to_dict()).filter_policy == FilterPolicy.MERGE


# ------------------------------------------------------------------------------ filter translation
def _random_metadata(rng: random.Random, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        m = {}
        if rng.random() < 0.8:
            m["tenant"] = rng.choice(TENANTS)
        if rng.random() < 0.8:
            m["year"] = rng.randint(2018, 2022)
        out.append(m)
    return out


def _lsr_mask(lsr_filter, metadatas: list[dict]) -> list[bool]:
    from lsr.collection.filters import compile_filter, metadata_columns

    table = metadata_columns(metadatas)
    ids = [f"x{i}" for i in range(len(metadatas))]
    return compile_filter(lsr_filter).mask(table, ids).tolist()


def _comparison(rng: random.Random) -> tuple[str, str, object]:
    key = rng.choice(["tenant", "year"])
    if key == "tenant":
        op = rng.choice(["==", "!=", "in", "not in"])
        value = rng.sample(TENANTS, 2) if "in" in op else rng.choice(TENANTS)
    else:
        op = rng.choice(["==", "!=", ">", ">=", "<", "<=", "in", "not in"])
        value = rng.sample(range(2018, 2023), 2) if "in" in op else rng.randint(2017, 2023)
    return key, op, value


def test_haystack_filter_translation_matches_haystack():
    from haystack import Document
    from haystack.utils.filters import document_matches_filter

    from lsr.adapters.haystack import to_lsr_filter

    rng = random.Random(3)
    metadatas = _random_metadata(rng, 60)
    documents = [Document(id=f"x{i}", content="t", meta=m) for i, m in enumerate(metadatas)]

    def random_filter(depth: int) -> dict:
        if depth == 0 or rng.random() < 0.4:
            key, op, value = _comparison(rng)
            return {"field": f"meta.{key}", "operator": op, "value": value}
        return {"operator": rng.choice(["AND", "OR", "NOT"]),
                "conditions": [random_filter(depth - 1) for _ in range(rng.randint(1, 3))]}

    for _ in range(150):
        spec = random_filter(3)
        want = [document_matches_filter(spec, d) for d in documents]
        assert _lsr_mask(to_lsr_filter(spec), metadatas) == want, spec
    for spec in ({"field": "id", "operator": "in", "value": ["x1", "x5"]},
                 *({"operator": op, "conditions": []} for op in ("AND", "OR", "NOT"))):
        assert _lsr_mask(to_lsr_filter(spec), metadatas) == [document_matches_filter(spec, d) for d in documents]
    for bad in ({"field": "meta.a.b", "operator": "==", "value": 1}, {"field": "content", "operator": "==", "value": 1},
                {"field": "meta.a", "operator": "like", "value": 1}, {"tenant": "a"},
                {"operator": "XOR", "conditions": []}, {"field": "meta.a", "operator": "in", "value": "a"}):
        with pytest.raises(FilterError):
            to_lsr_filter(bad)


def test_llamaindex_filter_translation_matches_llamaindex():
    from llama_index.core.vector_stores import FilterCondition, MetadataFilter, MetadataFilters
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn

    from lsr.adapters.llamaindex import to_lsr_filter

    rng = random.Random(4)
    metadatas = _random_metadata(rng, 60)
    ops = {"==": "==", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<=", "in": "in", "not in": "nin"}

    def random_filters(depth: int) -> MetadataFilters:
        children = []
        for _ in range(rng.randint(1, 3)):
            if depth and rng.random() < 0.3:
                children.append(random_filters(depth - 1))
            else:
                key, op, value = _comparison(rng)
                children.append(MetadataFilter(key=key, value=value, operator=ops[op]))
        return MetadataFilters(filters=children, condition=rng.choice(list(FilterCondition)))

    def reference(filters: MetadataFilters, i: int) -> bool:
        # llama-index's own evaluator for each flat comparison; its and/or/not rules for nesting
        matches = [reference(f, i) if isinstance(f, MetadataFilters) else
                   build_metadata_filter_fn(lambda _: metadatas[i], MetadataFilters(filters=[f]))(str(i))
                   for f in filters.filters]
        return {"and": all, "or": any}.get(filters.condition.value, lambda m: not any(m))(matches)

    for _ in range(150):
        spec = random_filters(2)
        want = [reference(spec, i) for i in range(len(metadatas))]
        assert _lsr_mask(to_lsr_filter(spec), metadatas) == want, spec
    for condition in FilterCondition:  # no filters: everything, as llama-index's evaluator has it
        empty = MetadataFilters(filters=[], condition=condition)
        assert _lsr_mask(to_lsr_filter(empty), metadatas) == [
            build_metadata_filter_fn(lambda _: metadatas[i], empty)(str(i)) for i in range(len(metadatas))]
    with pytest.raises(FilterError, match="contains"):
        to_lsr_filter(MetadataFilters(filters=[MetadataFilter(key="tags", value="x", operator="contains")]))


# ------------------------------------------------------------------------------------- packaging
@pytest.mark.parametrize("module, framework, extra", [("langchain", "langchain_core", "langchain"),
                                                      ("llamaindex", "llama_index.core", "llamaindex"),
                                                      ("haystack", "haystack", "haystack")])
def test_missing_framework_names_the_extra(monkeypatch, module, framework, extra):
    import importlib

    adapter = importlib.import_module(f"lsr.adapters.{module}")
    monkeypatch.setitem(sys.modules, framework, None)  # import of it now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'lsr\[{extra}\]'"):
        adapter._build()


def test_docs_rag_examples(tmp_path, monkeypatch):
    """docs/rag.md's Python blocks run, in order, as written."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "rag.md").read_text()
    blocks = list(re.finditer(r"```python\n(.*?)```", text, flags=re.S))
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # padded so that a traceback names the line of docs/rag.md
        code = "\n" * text[:block.start(1)].count("\n") + block.group(1)
        exec(compile(code, "docs/rag.md", "exec"), namespace)
