"""The collection CLI: lsr index CORPUS COLLECTION, lsr add, lsr delete, lsr search (trec, jsonl,
--filter) against the Python API over the same documents; old retriever directories still search."""
from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from lsr.cli import main
from lsr.collection import Collection
from lsr.io.runs import read_run


@pytest.fixture
def runner():
    return CliRunner()


def _jsonl(res_output: str) -> list[dict]:
    return [json.loads(line) for line in res_output.splitlines() if line.startswith("{")]


def test_index_add_delete_search(runner, tiny_beir, tmp_path):
    col = tmp_path / "col"
    res = runner.invoke(main, ["index", str(tiny_beir), str(col), "-r", "bm25"])
    assert res.exit_code == 0, res.output
    n0 = len(Collection.open(col, readonly=True))
    docs = tmp_path / "docs.jsonl.gz"
    rows = [{"_id": "n1", "title": "Heart", "text": "heart disease smoking risk", "metadata": {"lang": "en", "y": 2021}},
            {"_id": "n2", "text": "smoking and heart disease in children", "metadata": {"lang": "de", "y": 2020}},
            {"_id": "d1", "text": "replaced text about bananas", "metadata": {"lang": "en"}}]
    docs.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    res = runner.invoke(main, ["add", str(col), str(docs)])
    assert res.exit_code == 0 and "2 added, 1 replaced" in res.output, res.output
    res = runner.invoke(main, ["delete", str(col), "n2", "nope"])
    assert res.exit_code == 0 and "deleted 1 of 2" in res.output, res.output
    with Collection.open(col, readonly=True) as c:
        assert len(c) == n0 + 1 and c.get(["d1"])[0]["text"] == "replaced text about bananas"
        api = c.search("heart disease smoking", k=3, filter={"lang": "en"}, fields=["text", "metadata"])
        api_all = c.search("heart disease smoking", k=3)
    res = runner.invoke(main, ["search", str(col), "--query", "heart disease smoking", "-k", "3",
                               "--filter", '{"lang": "en"}', "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    got = _jsonl(res.output)
    assert [(g["doc_id"], g["rank"]) for g in got] == [(d["_id"], d["rank"]) for d in api.documents(0)]
    assert all(set(g) == {"query_id", "doc_id", "rank", "score", "text", "metadata"} for g in got)
    assert got[0]["metadata"]["lang"] == "en" and got[0]["query_id"] == "q0"
    out = tmp_path / "run.trec"
    res = runner.invoke(main, ["search", str(col), "--queries", str(tiny_beir / "queries.jsonl"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["search", str(col), "--query", "heart disease smoking", "-k", "3"])
    trec = [line.split() for line in res.output.splitlines() if line.startswith("q0 ")]
    assert [t[2] for t in trec] == [d for d, _ in api_all.hits(0)]
    assert set(read_run(out)) == {"q1", "q2", "q3", "q4"}


def test_errors_are_one_line(runner, tiny_beir, tmp_path):
    col = tmp_path / "col"
    assert runner.invoke(main, ["index", str(tiny_beir), str(col)]).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "x", "text": "a"}\n{"_id": "y", "text": "b", "metadata": [1]}\n')
    res = runner.invoke(main, ["add", str(col), str(bad)])
    assert res.exit_code == 1 and "bad.jsonl:2" in res.output and "metadata" in res.output
    res = runner.invoke(main, ["search", str(col), "--query", "x", "--filter", '{"_id": {"$regex": "e"}}'])
    assert res.exit_code == 1 and "$regex" in res.output and "Traceback" not in res.output
    with Collection.open(col):  # a writer holds the lock
        res = runner.invoke(main, ["delete", str(col), "d1"])
        assert res.exit_code == 1 and "write.lock" in res.output and "pid" in res.output
    res = runner.invoke(main, ["index", str(tiny_beir), str(col)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(main, ["index", str(tiny_beir), str(col), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parquet_documents_and_old_retriever_directories(runner, tiny_beir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = tmp_path / "col"
    assert runner.invoke(main, ["index", str(tiny_beir), str(col)]).exit_code == 0
    pq.write_table(pa.Table.from_pydict({"_id": ["p1"], "title": ["T"], "text": ["parquet heart"],
                                         "metadata": [json.dumps({"src": "pq"})]}), tmp_path / "d.parquet")
    assert runner.invoke(main, ["add", str(col), str(tmp_path / "d.parquet")]).exit_code == 0
    assert Collection.open(col, readonly=True).get(["p1"])[0]["metadata"] == {"src": "pq"}
    old = tmp_path / "old"
    assert runner.invoke(main, ["index", str(tiny_beir), str(old), "--retriever-dir"]).exit_code == 0
    new_hits = runner.invoke(main, ["search", str(tmp_path / "col"), "--query", "heart disease smoking", "-k", "2"])
    res = runner.invoke(main, ["search", str(old), "--query", "heart disease smoking", "-k", "2"])
    assert res.exit_code == 0, res.output
    assert [l.split()[2] for l in res.output.splitlines() if l.startswith("q0 ")] == ["d1", "d3"]
    assert new_hits.exit_code == 0
    res = runner.invoke(main, ["search", str(old), "--query", "x", "--filter", "{}"])
    assert res.exit_code == 2 and "filters need a collection" in res.output


def test_index_keeps_titles_and_corpus_metadata_for_filters(tmp_path):
    """`lsr index` of a BEIR-style corpus stores each line's title apart and its metadata object,
    so a filter on it works and the hits equal a collection built through the Python API."""
    import json

    from click.testing import CliRunner

    import lsr
    from lsr.cli import main

    docs = [{"_id": "d1", "title": "Heart", "text": "heart disease and blood pressure", "metadata": {"src": "a"}},
            {"_id": "d2", "title": "", "text": "heart attack risk", "metadata": {"src": "b"}},
            {"_id": "d3", "title": "Markets", "text": "stock markets fell", "metadata": {}}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    res = CliRunner().invoke(main, ["index", str(corpus), str(tmp_path / "c"), "-r", "bm25"])
    assert res.exit_code == 0, res.output
    with lsr.Collection.open(tmp_path / "c", readonly=True) as col:
        got = col.get(["d1", "d3"])
        assert got[0]["title"] == "Heart" and got[0]["metadata"] == {"src": "a"}
        hits = col.search("heart", k=3, filter={"src": "b"}).hits(0)
    with lsr.Collection.create(tmp_path / "ref", "bm25") as ref:
        ref.add([{k: v for k, v in d.items() if v != {}} for d in docs])
        expected = ref.search("heart", k=3, filter={"src": "b"}).hits(0)
    assert [h[0] for h in hits] == ["d2"] and hits == expected


def test_add_streams_a_large_file_in_batches_and_a_bad_line_changes_nothing(runner, tmp_path, monkeypatch):
    """`lsr add` reads and encodes --batch-size documents at a time (the first segment is written
    before the file is read to its end), commits the file once (equal to a fresh build of the same
    documents), and a malformed line near the end leaves the collection as it was."""
    import os
    import random

    import lsr.cli.collection as cli_collection
    from lsr.collection.engines.bm25 import BM25Engine
    from test_collection_storage import WORDS, hits, same_hits

    rng = random.Random(9)
    n, queries = 25_000, ["heart disease risk", "w17 bank", "ocean w250 flood"]
    rows = [{"_id": f"g{i}", "text": f"{rng.choice(WORDS)} {rng.choice(WORDS)} w{i % 501}",
             "metadata": {"b": i % 7}} for i in range(n)]
    first = [{"_id": "g3", "text": "old text of g3"}] + [{"_id": f"z{i}", "text": "heart bank"} for i in range(3)]
    col = tmp_path / "col"
    with Collection.create(col, "bm25") as c:
        c.add(first)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read, written = [0], []  # documents read from the file when each segment was written
    real_read, real_write = cli_collection.read_documents, BM25Engine.write_segment

    def counted(path):
        for doc in real_read(path):
            read[0] += 1
            yield doc

    def spy(self, texts, directory, show_progress=False):
        written.append((read[0], len(texts)))
        return real_write(self, texts, directory, show_progress=show_progress)

    monkeypatch.setattr(cli_collection, "read_documents", counted)
    monkeypatch.setattr(BM25Engine, "write_segment", spy)
    res = runner.invoke(main, ["add", str(col), str(good), "--batch-size", "10000"])
    assert res.exit_code == 0 and f"{n - 1} added, 1 replaced" in res.output, res.output
    assert [t for _, t in written] == [10_000, 10_000, 5_000] and written[0][0] <= 10_001
    with Collection.create(tmp_path / "ref", "bm25") as ref, Collection.open(col, readonly=True) as c:
        ref.add(first[1:] + rows)  # the same documents in collection order, one segment
        assert len(c) == n + 3 and c.ids() == ref.ids() and c.generation == 2  # one commit for the file (no merge)
        for flt in (None, {"b": 3}):
            got, want = c.search(queries, k=10, filter=flt), ref.search(queries, k=10, filter=flt)
            assert all(same_hits(hits(got, i), hits(want, i)) for i in range(len(queries)))
        before = (len(c), c.ids(), c.generation, [hits(c.search(queries, k=10), i) for i in range(len(queries))])
    segments = sorted(os.listdir(col / "segments"))
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"_id": f"h{i}", "text": f"heart {rng.choice(WORDS)}"}) for i in range(n)]
    lines[n - 10] = '{"_id": "h-bad", "text": '
    bad.write_text("\n".join(lines) + "\n")
    written.clear()
    res = runner.invoke(main, ["add", str(col), str(bad), "--batch-size", "10000"])
    assert res.exit_code == 1 and f"bad.jsonl:{n - 9}" in res.output and "Traceback" not in res.output, res.output
    assert len(written) == 2  # two batches were written before the bad line, then removed
    assert sorted(os.listdir(col / "segments")) == segments
    with Collection.open(col, readonly=True) as c:
        after = (len(c), c.ids(), c.generation, [hits(c.search(queries, k=10), i) for i in range(len(queries))])
    assert after == before
