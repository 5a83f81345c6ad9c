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


def test_empty_documents_are_kept_with_one_warning(tmp_path, tiny_beir, caplog):
    lines = ['{"_id": "a", "text": "heart"}', '{"_id": "b", "text": " ", "title": ""}', "",
             '{"_id": "c", "text": "lung"}', '{"_id": "d", "text": "", "title": "\\t"}']
    p = write(tmp_path, "corpus.jsonl", "\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="lsr.io.readers"):
        c = read_corpus(p)
    assert c.ids == ["a", "b", "c", "d"] and c.contents(1) == " "
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "2 document(s) with empty title and text (first 'b' at line 2)" in warnings[0].getMessage()
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: field 'text': document 'b' has empty"):
        read_corpus(p, allow_empty=False)
    # the default of load_beir too (the CLI reads corpora through these defaults)
    for name in ("queries.jsonl", "qrels"):
        src, dst = tiny_beir / name, tmp_path / name
        dst.mkdir() if src.is_dir() else dst.write_bytes(src.read_bytes())
    (tmp_path / "qrels" / "test.tsv").write_text("q1\ta\t1\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="lsr.io.readers"):
        assert len(load_beir(tmp_path).corpus) == 4
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    pq.write_table(pa.table({"_id": ["a", "b"], "text": ["x", None]}), tmp_path / "c.parquet")
    caplog.clear()
    with caplog.at_level("WARNING", logger="lsr.io.readers"):
        assert read_corpus(tmp_path / "c.parquet").ids == ["a", "b"]
    assert "first 'b' at row 2" in caplog.text


# every character str.isspace() accepts is refused, not only ASCII blanks, and lone surrogates
# (JSON "\ud800" escapes) that no UTF-8 run file can hold
BAD_ID_CHARS = ["\t", "\n", "\r", "\x0b", "\x0c", " ", "\x1c", "\x85", "\xa0", "\u1680", "\u2003", "\u2028",
                "\u3000", "\ud800", "\udfff"]


@pytest.mark.parametrize("char", BAD_ID_CHARS, ids=ascii)
def test_ids_that_no_trec_run_can_hold_are_refused(tmp_path, char):
    bad = f"x{char}1"
    doc = json.dumps({"_id": bad, "text": "t"})  # json escapes the surrogate and control characters
    p = write(tmp_path, "corpus.jsonl", '{"_id": "ok", "text": "t"}\n\n' + doc + "\n")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:3: field '_id': document id 'x.+1' contains"):
        read_corpus(p)
    q = write(tmp_path, "q.jsonl", '{"_id": "ok", "text": "t"}\n' + json.dumps({"id": bad, "text": "t"}) + "\n")
    with pytest.raises(DataFormatError, match=r"q.jsonl:2: field 'id': query id 'x.+1' contains"):
        read_queries(q)
    if "\ud800" <= char <= "\udfff":
        return  # Parquet, TSV and qrels are UTF-8 bytes: a surrogate there is already invalid UTF-8
    pq.write_table(pa.table({"_id": ["ok", bad], "text": ["t", "t"]}), tmp_path / "c.parquet")
    with pytest.raises(DataFormatError, match=r"c.parquet:2: field '_id': document id 'x.+1' contains"):
        read_corpus(tmp_path / "c.parquet")
    if char in "\n\r\x0b\x0c\x1c\x85\u2028":
        return  # line breaks for Python: these split the TSV line itself (a column count error)
    if char != "\t":  # in TSV a tab is the separator, not part of an id
        tsv = write(tmp_path, "q.tsv", f"ok\tt\n{bad}\tt\n")
        with pytest.raises(DataFormatError, match=r"q.tsv:2: field 'id': query id 'x.+1' contains"):
            read_queries(tsv)
        qrels = write(tmp_path, "qrels.tsv", f"q1\td1\t1\nq1\t{bad}\t1\n")
        with pytest.raises(DataFormatError, match=r"qrels.tsv:2: field 'corpus-id': document id 'x.+1' contains"):
            read_qrels(qrels)
    trec = write(tmp_path, "qrels.txt", f"q1 0 d1 1\nq{char}1 0 d1 1\n")  # splits into 5 columns
    with pytest.raises(DataFormatError, match=r"qrels.txt:2: expected 3 or 4 columns"):
        read_qrels(trec)


def test_duplicate_ids_name_both_lines(tmp_path):
    p = write(tmp_path, "corpus.jsonl", '{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": "y"}\n'
                                        '{"_id": "a", "text": "z"}\n')
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:4: field '_id': duplicate document id 'a' "
                                              r"\(first at line 1\)"):
        read_corpus(p)
    q = write(tmp_path, "q.jsonl", '\n{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"}\n'
                                   '{"_id": "1", "text": "c"}\n')
    with pytest.raises(DataFormatError, match=r"q.jsonl:4: field '_id': duplicate query id '1' \(first at line 2\)"):
        read_queries(q)
    t = write(tmp_path, "q.tsv", "query-id\ttext\n1\ta\n\n1\tb\n")
    with pytest.raises(DataFormatError, match=r"q.tsv:4: field 'id': duplicate query id '1' \(first at line 2\)"):
        read_queries(t)
    pq.write_table(pa.table({"_id": ["a", "b", "a"], "text": ["x", "y", "z"]}), tmp_path / "d.parquet")
    with pytest.raises(DataFormatError, match=r"d.parquet:3: field '_id': duplicate document id 'a' "
                                              r"\(first at row 1\)"):
        read_corpus(tmp_path / "d.parquet")


def test_gzipped_corpus_and_queries(tmp_path, tiny_beir):
    import gzip

    plain = load_beir(tiny_beir)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((tiny_beir / name).read_bytes()))
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_bytes((tiny_beir / "qrels" / "test.tsv").read_bytes())
    ds = load_beir(tmp_path)  # finds corpus.jsonl.gz and queries.jsonl.gz
    assert (ds.corpus.ids, ds.corpus.all_contents(), ds.queries, ds.qrels) == (
        plain.corpus.ids, plain.corpus.all_contents(), plain.queries, plain.qrels)
    assert read_corpus(tmp_path / "corpus.jsonl.gz").ids == plain.corpus.ids
    tsv = tmp_path / "q.tsv.gz"
    tsv.write_bytes(gzip.compress("\ufeffqid\tquery\n1\ta b\n".encode()))
    assert read_queries(tsv) == {"1": "a b"}
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress((tiny_beir / "corpus.jsonl").read_bytes())[:-30])
    with pytest.raises(DataFormatError, match=r"cut.jsonl.gz:\d+: corrupt or truncated gzip"):
        read_corpus(cut)
    notgz = write(tmp_path, "plain.jsonl.gz", '{"_id": "a", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"plain.jsonl.gz:1: corrupt or truncated gzip"):
        read_corpus(notgz)


@pytest.mark.parametrize("header", ["query-id\ttext", "id\ttext", "_id\ttext", "qid\tquery", "QID\tText"])
@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_tsv_queries_bom_and_header(tmp_path, header, bom):
    t = write(tmp_path, "q.tsv", f"{bom}{header}\n1\ta b\n2\tc\n")
    assert read_queries(t) == {"1": "a b", "2": "c"}
    t = write(tmp_path, "q.tsv", f"{bom}1\ta b\nid\ttext\n")  # a header only on the first line
    assert read_queries(t) == {"1": "a b", "id": "text"}
    j = write(tmp_path, "q.jsonl", f'{bom}{{"_id": "1", "text": "a b"}}\n')
    assert read_queries(j) == {"1": "a b"}


@pytest.mark.parametrize("grade", ["1.5", "0.999", "inf", "-inf", "nan", "Infinity", "1e100",
                                   "1048577", "2147483647", "2147483648", "-2147483649", "99999999999999999999"])
def test_qrels_grades_must_be_integers_pytrec_eval_can_hold(tmp_path, grade):
    # 2**31 - 1 fits a C int, yet trec_eval's nDCG allocates per grade level: 14 GB, killed
    with pytest.raises(DataFormatError, match=rf"q.tsv:3: field 'score': relevance '{grade}' is"):
        read_qrels(write(tmp_path, "q.tsv", f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{grade}\n"))
    with pytest.raises(DataFormatError, match=rf"q.txt:2: field 'score': relevance '{grade}' is"):
        read_qrels(write(tmp_path, "q.txt", f"q1 0 d1 1\nq1 0 d2 {grade}\n"))


def test_qrels_integral_grades_bom_header_and_pytrec_eval(tmp_path):
    import pytrec_eval

    p = write(tmp_path, "q.tsv", "\ufeffquery-id\tcorpus-id\tscore\nq1\td1\t2.0\nq1\td2\t-1\n"
                                 "q1\td3\t1048576\nq2\td1\t-2147483648\t\n")
    qrels = read_qrels(p)
    assert qrels == {"q1": {"d1": 2, "d2": -1, "d3": 2**20}, "q2": {"d1": -(2**31)}}
    # the extreme grades accepted are evaluated (lsr's nDCG is trec_eval's ndcg_cut) in a blink
    res = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate({"q1": {"d3": 2.0, "d1": 1.0}})
    assert res["q1"]["ndcg_cut_10"] == pytest.approx(1.0)


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
