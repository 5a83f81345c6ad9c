"""Inference-free encoder: IDF-weighted tokenizer queries (torch-free), SPLADE documents."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest_splade import CORPUS, QUERIES, TEXTS, reference_splade, tiny_beir, tiny_mlm  # noqa: E402

from lsr.encoders.inference_free import InferenceFreeEncoder  # noqa: E402

__all__ = ["tiny_beir", "tiny_mlm"]

IDF_TABLE = Path("/work/shared/models/opensearch-inference-free-idf/idf.json")
REPO = Path(__file__).resolve().parents[1]


def _reference_query(model_dir: Path, idf: dict, text: str, max_length: int) -> dict[str, float]:
    """Independent: transformers tokenizer, distinct non-special tokens, weight idf[token]."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
    out = {}
    for i in set(ids) - set(tok.all_special_ids):
        t = tok.convert_ids_to_tokens(i)
        if idf.get(t, 0):
            out[t] = idf[t]
    return out


def test_queries_are_idf_weighted_distinct_tokens(tiny_mlm):
    enc = InferenceFreeEncoder(tiny_mlm, query_max_length=8)  # real checkpoint layout: idf.json beside the model
    idf = json.loads((tiny_mlm / "idf.json").read_text())
    queries = ["heart heart disease, the Heart!", "unknownword", "", "blood pressure high cholesterol smoking stock "
               "market fell sharply on tuesday"]
    batch = enc.encode_queries(queries)
    for i, q in enumerate(queries):
        got = {t: w for t, w in enc.decode(batch, row=i)}
        want = _reference_query(tiny_mlm, idf, q, 8)
        assert got.keys() == want.keys()
        for t in want:
            assert got[t] == pytest.approx(want[t], abs=1e-4)


def test_documents_are_splade(tiny_mlm):
    enc = InferenceFreeEncoder(tiny_mlm, doc_max_length=20)
    np.testing.assert_allclose(enc.encode_documents(TEXTS).to_scipy().toarray(),
                               reference_splade(tiny_mlm, TEXTS, 20), atol=1e-4)


def test_documents_are_cut_at_the_length_the_model_declares(tiny_mlm, tmp_path):
    """A model's sentence_bert_config.json max_seq_length is the default document length (an
    explicit one wins; none declared: 256); a bad declaration is an error naming the file."""
    model = tmp_path / "model"
    shutil.copytree(tiny_mlm, model)
    assert InferenceFreeEncoder(model).doc_max_length == 256
    (model / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 6, "do_lower_case": False}))
    enc = InferenceFreeEncoder(model)
    assert enc.doc_max_length == 6 and enc.config()["doc_max_length"] == 6
    np.testing.assert_allclose(enc.encode_documents(TEXTS).to_scipy().toarray(),
                               reference_splade(tiny_mlm, TEXTS, 6), atol=1e-4)
    assert not np.allclose(reference_splade(tiny_mlm, TEXTS, 6), reference_splade(tiny_mlm, TEXTS, 40))
    assert InferenceFreeEncoder(model, doc_max_length=20).doc_max_length == 20
    for bad in ('{"max_seq_length": 2}', '{"max_seq_length": true}', '[1]', '{'):
        (model / "sentence_bert_config.json").write_text(bad)
        with pytest.raises(ValueError, match="sentence_bert_config.json"):
            InferenceFreeEncoder(model)


def test_collection_keeps_the_length_its_model_declared_at_creation(tiny_mlm, tmp_path):
    """A collection pins the declared document length in its manifest: reopened after the model's
    declaration changed, it encodes new documents and searches as when created (a fresh
    retriever at that length is the reference)."""
    import lsr
    from lsr.retrievers.sparse import InferenceFreeRetriever

    model = tmp_path / "model"
    shutil.copytree(tiny_mlm, model)
    (model / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 7}))
    docs = [{"_id": d, "text": f"{t} {x}".strip()} for d, (t, x) in CORPUS.items()]
    with lsr.Collection.create(tmp_path / "col", "inference-free", model=str(model)) as col:
        col.add(docs[:3])
    assert json.loads((tmp_path / "col" / "manifest.json").read_text())["options"]["doc_max_length"] == 7
    (model / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40}))
    with lsr.Collection.open(tmp_path / "col") as col:
        col.add(docs[3:])
        got = col.search(list(QUERIES.values()), k=len(docs))
    fresh = InferenceFreeRetriever(str(model), doc_max_length=7)
    fresh.index([d["_id"] for d in docs], [d["text"] for d in docs])
    want = fresh.search(list(QUERIES.values()), k=len(docs))
    assert sum(len(got.hits(i)) for i in range(len(QUERIES))) > 0
    for i in range(len(QUERIES)):
        assert [d for d, _ in got.hits(i)] == [d for d, _ in want.hits(i)]
        np.testing.assert_allclose([s for _, s in got.hits(i)], [s for _, s in want.hits(i)], rtol=1e-5)


@pytest.mark.skipif(not IDF_TABLE.is_file(), reason="shared idf.json not present")
def test_opensearch_table_matches_model_card(tiny_mlm):
    from conftest_splade import SPLADE_TINY

    if not SPLADE_TINY.is_dir():
        pytest.skip("shared splade-tiny model not present")
    enc = InferenceFreeEncoder(SPLADE_TINY, idf=IDF_TABLE)
    # the opensearch doc-v1 / doc-v2-mini model cards print these weights
    assert enc.decode(enc.encode_queries(["What's the weather in ny now?"]), top_k=4) == [
        ("ny", 5.7729), ("weather", 4.5684), ("now", 3.5895), ("?", 3.3313)]


def test_idf_override_and_errors(tiny_mlm, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_mlm, model)
    (model / "idf.json").unlink()
    with pytest.raises(ValueError, match="--idf"):
        InferenceFreeEncoder(model)
    other = tmp_path / "other_idf.json"
    other.write_text(json.dumps({"heart": 9.0, "disease": 2.5, "[CLS]": 100.0}))
    enc = InferenceFreeEncoder(model, idf=other)
    assert enc.decode(enc.encode_queries(["heart disease blood"])) == [("heart", 9.0), ("disease", 2.5)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"heart": "high"}))
    with pytest.raises(ValueError, match="'heart'"):
        InferenceFreeEncoder(model, idf=bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        InferenceFreeEncoder(model, idf=bad)
    with pytest.raises(ValueError, match="does not exist"):
        InferenceFreeEncoder(model, idf=tmp_path / "missing.json")


def test_save_copies_idf(tiny_mlm, tmp_path):
    src = tmp_path / "idf.json"
    shutil.copyfile(tiny_mlm / "idf.json", src)
    enc = InferenceFreeEncoder(tiny_mlm, idf=src)
    out = tmp_path / "saved"
    out.mkdir()
    enc.save(out)
    src.unlink()  # the saved encoder is self-contained on the query side
    back = InferenceFreeEncoder.load(out)
    q = ["heart disease risk"]
    assert back.decode(back.encode_queries(q)) == enc.decode(enc.encode_queries(q))
    assert json.loads((out / "encoder.json").read_text())["idf"] == "idf.json"


def test_query_path_never_imports_torch(tiny_mlm, tmp_path):
    """Query encoding and search of a saved inference-free index run without torch in the process."""
    from lsr.retrievers.sparse import InferenceFreeRetriever

    r = InferenceFreeRetriever.from_options(model=str(tiny_mlm), doc_max_length=32)
    r.index(list(CORPUS), [f"{t} {x}" for t, x in CORPUS.values()])
    r.save(tmp_path / "idx")
    expected = r.search(list(QUERIES.values()), k=3).ids.tolist()
    code = textwrap.dedent(f"""
        import json, sys
        from lsr.encoders.inference_free import InferenceFreeEncoder
        enc = InferenceFreeEncoder({str(tiny_mlm)!r})
        enc.encode_queries(["what causes heart disease"])
        assert "torch" not in sys.modules, "encoding queries imported torch"
        from lsr.retrievers.base import load_retriever
        r = load_retriever({str(tmp_path / 'idx')!r})
        ids = r.search({list(QUERIES.values())!r}, k=3).ids.tolist()
        print(json.dumps({{"torch": "torch" in sys.modules, "ids": ids}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "ids": expected}


def test_cli_eval_inference_free(tiny_mlm, tiny_beir, tmp_path):
    from click.testing import CliRunner

    from lsr.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", "inference-free", "-m", str(tiny_mlm),
                                    "--idf", str(tiny_mlm / "idf.json"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "run.trec").is_file() and "ndcg@10" in json.loads((out / "metrics.json").read_text())


def test_corpus_idf_is_bm25_idf_over_document_frequencies(tiny_mlm):
    """Against an independent count: transformers' tokenizer, a set per text, Lucene's BM25 idf."""
    import math

    from transformers import AutoTokenizer

    from lsr.encoders.inference_free import corpus_idf

    texts = TEXTS + ["heart heart " * 400]  # a text far longer than any model limit counts whole
    table = corpus_idf(tiny_mlm, iter(texts), batch_size=3)
    tok = AutoTokenizer.from_pretrained(str(tiny_mlm))
    df: dict[str, int] = {}
    for text in texts:
        for t in set(tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])):
            df[t] = df.get(t, 0) + 1
    n = len(texts)
    assert set(table) == set(tok.get_vocab())
    for token in tok.get_vocab():
        expected = 0.0 if token in tok.all_special_tokens else math.log(1 + (n - df.get(token, 0) + 0.5)
                                                                          / (df.get(token, 0) + 0.5))
        assert table[token] == pytest.approx(expected, rel=1e-12, abs=1e-12), token
    with pytest.raises(ValueError, match="empty corpus"):
        corpus_idf(tiny_mlm, [])


def test_cli_idf_writes_a_table_that_eval_reads(tiny_mlm, tiny_beir, tmp_path):
    """`lsr idf` writes the table of corpus_idf; `lsr eval --idf` searches with it; errors are one line."""
    from click.testing import CliRunner

    from lsr.cli import main
    from lsr.encoders.inference_free import corpus_idf
    from lsr.io.readers import read_corpus

    out = tmp_path / "idf.json"
    res = CliRunner().invoke(main, ["idf", str(tiny_beir), str(out), "-m", str(tiny_mlm)])
    assert res.exit_code == 0, res.output
    table = json.loads(out.read_text())
    assert table == corpus_idf(tiny_mlm, read_corpus(tiny_beir / "corpus.jsonl").all_contents())
    enc = InferenceFreeEncoder(str(tiny_mlm), idf=out)
    q = enc.encode_queries(["heart disease"])
    want = _reference_query(tiny_mlm, table, "heart disease", 512)
    assert want and dict(enc.decode(q, row=0)) == pytest.approx(want, abs=1e-4)  # decode rounds to 4 places
    before = out.read_text()
    res = CliRunner().invoke(main, ["idf", str(tiny_beir), str(out), "-m", str(tiny_mlm)])
    assert res.exit_code == 1 and "exists" in res.output and out.read_text() == before
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((tiny_beir / "corpus.jsonl").read_text())
    res = CliRunner().invoke(main, ["idf", str(corpus), str(corpus), "-m", str(tiny_mlm), "--overwrite"])
    assert res.exit_code == 1 and "corpus being read" in res.output
    assert corpus.read_text() == (tiny_beir / "corpus.jsonl").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\n{"_id": \n')
    res = CliRunner().invoke(main, ["idf", str(bad), str(tmp_path / "x.json"), "-m", str(tiny_mlm)])
    assert res.exit_code == 1 and "bad.jsonl:2" in res.output and not (tmp_path / "x.json").exists()
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", "inference-free", "-m", str(tiny_mlm),
                                    "--idf", str(out), "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
