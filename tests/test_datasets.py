"""Corpus, query, qrels and BEIR loading, including every bad-input path."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lsr import DataFormatError, load_beir, read_corpus, read_qrels, read_queries
from lsr.io.readers import iter_corpus


def test_tiny_beir(tiny_beir):
    ds = load_beir(tiny_beir)
    assert ds.name == "tiny_beir" and len(ds.corpus) == 6
    assert set(ds.queries) == {"q1", "q2", "q3"}  # q4 is not judged in the test split
    assert ds.qrels["q1"] == {"d1": 2, "d3": 1}
    assert ds.corpus.contents(0).startswith("Heart disease Heart disease is")
    assert ds.corpus.contents(2) == "Smoking causes lung cancer and heart attacks."  # empty title


def test_unknown_split(tiny_beir):
    with pytest.raises(ValueError, match="unknown split 'dev'; available: test"):
        load_beir(tiny_beir, split="dev")


def test_not_a_beir_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_beir(tmp_path / "missing")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("q\td\t1\n")
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(tmp_path)


def write(tmp_path, name, content: str | bytes):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', r"corpus.jsonl:2: malformed JSON"),
        ('{"_id": "a", "text": "x"}\n{"text": "y"}\n', r"corpus.jsonl:2: field '_id': missing id"),
        ('{"_id": "a", "title": "t"}\n', r"corpus.jsonl:1: field 'text': missing text"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', r"corpus.jsonl:2: field '_id': duplicate document id 'a'"),
        ('{"_id": "a", "text": "  ", "title": ""}\n', r"corpus.jsonl:1: field 'text': document 'a' has empty"),
        ('{"_id": "a", "text": 5}\n', r"corpus.jsonl:1: field 'text': expected a string, got int"),
        ('[1, 2]\n', r"corpus.jsonl:1: expected a JSON object"),
        ("", r"corpus.jsonl: file is empty"),
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff\xfe"}\n', r"corpus.jsonl:2: not valid UTF-8"),
        ('{"_id": "", "text": "x"}\n', r"corpus.jsonl:1: field '_id': empty document id"),
    ],
)
def test_bad_corpus(tmp_path, content, match):
    p = write(tmp_path, "corpus.jsonl", content)
    with pytest.raises(DataFormatError, match=match):
        read_corpus(p)


def test_corpus_field_aliases_and_empty_allowed(tmp_path):
    p = write(tmp_path, "c.jsonl", '{"id": 7, "contents": "hello"}\n\n{"docid": "x", "text": "", "title": ""}\n')
    c = read_corpus(p, allow_empty=True)
    assert c.ids == ["7", "x"] and c.texts == ["hello", ""]


def test_parquet_corpus(tmp_path):
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"_id": ["a", "b"], "title": ["T", None], "text": ["one", "two"]}), p)
    c = read_corpus(p)
    assert c.ids == ["a", "b"] and c.all_contents() == ["T one", "two"]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"_id": ["a"], "body2": ["x"]}), bad)
    with pytest.raises(DataFormatError, match="no text column"):
        read_corpus(bad)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"_id": ["a", "a"], "text": ["x", "y"]}), dup)
    with pytest.raises(DataFormatError, match="dup.parquet:2: field '_id': duplicate"):
        read_corpus(dup)
    notpq = write(tmp_path, "fake.parquet", b"not parquet at all")
    with pytest.raises(DataFormatError, match="not a readable Parquet"):
        list(iter_corpus(notpq))


def test_queries_jsonl_and_tsv(tmp_path):
    j = write(tmp_path, "q.jsonl", '{"_id": "1", "text": "a b"}\n{"_id": "2", "text": "c"}\n')
    assert read_queries(j) == {"1": "a b", "2": "c"}
    t = write(tmp_path, "q.tsv", "1\ta b\n2\tc\n")
    assert read_queries(t) == {"1": "a b", "2": "c"}
    with pytest.raises(DataFormatError, match=r"q2.tsv:2: field 'text': expected 'id<TAB>text'"):
        read_queries(write(tmp_path, "q2.tsv", "1\ta\n2 no tab\n"))
    with pytest.raises(DataFormatError, match=r"q3.jsonl:2: field '_id': duplicate query id '1'"):
        read_queries(write(tmp_path, "q3.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n'))


def test_qrels_formats(tmp_path):
    beir = write(tmp_path, "a.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    trec = write(tmp_path, "b.txt", "q1 0 d1 1\nq1 0 d2 0\n")
    assert read_qrels(beir) == read_qrels(trec) == {"q1": {"d1": 1, "d2": 0}}
    with pytest.raises(DataFormatError, match=r"c.tsv:1: expected 3 or 4 columns"):
        read_qrels(write(tmp_path, "c.tsv", "q1 d1\n"))
    with pytest.raises(DataFormatError, match=r"d.tsv:1: field 'score': relevance 'x'"):
        read_qrels(write(tmp_path, "d.tsv", "q1 d1 x\n"))


def test_beir_qrels_with_unknown_query(tmp_path, tiny_beir):
    for name in ("corpus.jsonl", "queries.jsonl"):
        (tmp_path / name).write_text((tiny_beir / name).read_text())
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("qX\td1\t1\n")
    with pytest.raises(DataFormatError, match="not in queries.jsonl"):
        load_beir(tmp_path)
