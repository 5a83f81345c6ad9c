"""The CLI through click's CliRunner on the tiny BEIR dataset."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lsr import evaluate, load_beir, read_run
from lsr.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_commands(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("index", "search", "eval"):
        assert cmd in res.output


def test_eval_writes_run_and_metrics(runner, tiny_beir, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(main, ["eval", str(tiny_beir), "--retriever", "bm25", "--output", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"ndcg@10", "recall@100", "recall@1000", "mrr@10", "map"}
    run = read_run(out / "run.trec")
    assert "q2" not in run.get("q2", {}), "self hit must be dropped"
    ds = load_beir(tiny_beir)
    assert metrics == pytest.approx(evaluate(ds.qrels, run))
    assert (out / "per_query.tsv").read_text().count("\n") == 1 + len(ds.qrels)
    config = json.loads((out / "config.json").read_text())
    assert config["retriever"] == "bm25" and config["n_docs"] == 6
    assert "ndcg@10" in res.output  # table on stderr (mixed into output by CliRunner)

    keep = tmp_path / "keep"
    res = runner.invoke(main, ["eval", str(tiny_beir), "-o", str(keep), "--keep-self-hits"])
    assert res.exit_code == 0, res.output
    assert "q2" in read_run(keep / "run.trec")["q2"]


def test_index_then_search(runner, tiny_beir, tmp_path):
    idx = tmp_path / "idx"
    res = runner.invoke(main, ["index", str(tiny_beir), str(idx)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["search", str(idx), "--query", "heart disease smoking", "-k", "2"])
    assert res.exit_code == 0, res.output
    lines = [l for l in res.output.splitlines() if l.startswith("q0 ")]
    assert [l.split()[2] for l in lines] == ["d1", "d3"]
    out = tmp_path / "run.trec"
    res = runner.invoke(main, ["search", str(idx), "--queries", str(tiny_beir / "queries.jsonl"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert set(read_run(out)) == {"q1", "q2", "q3", "q4"}
    # existing index is not overwritten without --overwrite
    res = runner.invoke(main, ["index", str(tiny_beir), str(idx)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(main, ["index", str(tiny_beir), str(idx), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_cli_errors_are_clean(runner, tiny_beir, tmp_path):
    res = runner.invoke(main, ["eval", str(tiny_beir), "-o", str(tmp_path / "o"), "--split", "dev"])
    assert res.exit_code == 2 and "unknown split 'dev'" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    res = runner.invoke(main, ["index", str(bad), str(tmp_path / "i")])
    assert res.exit_code == 1 and "bad.jsonl:2" in res.output and "duplicate" in res.output
    assert not (tmp_path / "i").exists()
    res = runner.invoke(main, ["search", str(tmp_path), "--query", "x"])
    assert res.exit_code == 1 and "not an lsr index" in res.output
    res = runner.invoke(main, ["search", str(tmp_path)])
    assert res.exit_code == 2


def _copy_beir(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_bad_qrels_line_is_a_data_error_not_a_bad_split(runner, tiny_beir, tmp_path):
    data = _copy_beir(tiny_beir, tmp_path / "ds")
    with open(data / "qrels" / "test.tsv", "a") as f:
        f.write("q1\td2\t1.5\n")
    res = runner.invoke(main, ["eval", str(data), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert "test.tsv:" in res.output and "--split" not in res.output and "Traceback" not in res.output


def test_damaged_manifest_and_file_system_errors_are_one_line(runner, tiny_beir, tmp_path):
    idx = tmp_path / "idx"
    assert runner.invoke(main, ["index", str(tiny_beir), str(idx)]).exit_code == 0
    (idx / "manifest.json").write_text("{not json")
    res = runner.invoke(main, ["search", str(idx), "--query", "heart"])
    assert res.exit_code == 1 and "manifest.json" in res.output and isinstance(res.exception, SystemExit)
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(main, ["index", str(tiny_beir), str(blocker / "sub" / "idx")])
    assert res.exit_code == 1 and str(blocker) in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_gzipped_beir_directory_indexes(runner, tiny_beir, tmp_path):
    import gzip

    data = _copy_beir(tiny_beir, tmp_path / "ds")
    corpus = (data / "corpus.jsonl").read_bytes()
    (data / "corpus.jsonl").unlink()
    (data / "corpus.jsonl.gz").write_bytes(gzip.compress(corpus))
    res = runner.invoke(main, ["index", str(data), str(tmp_path / "i")])
    assert res.exit_code == 0, res.output


def test_a_closed_stdout_ends_quietly(runner, tiny_beir, tmp_path, monkeypatch):
    # `lsr search ... | head`: the reader goes away; Unix tools stop without an error message
    idx = tmp_path / "idx"
    assert runner.invoke(main, ["index", str(tiny_beir), str(idx)]).exit_code == 0
    import lsr.io.runs

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(lsr.io.runs, "write_run", closed)
    res = runner.invoke(main, ["search", str(idx), "--query", "heart"])
    assert res.exit_code == 1 and "Broken pipe" not in res.output and "Error" not in res.output


def test_nan_is_refused_before_any_work(runner, tiny_beir, tmp_path):
    res = runner.invoke(main, ["index", str(tiny_beir), str(tmp_path / "i"), "--k1", "nan"])
    assert res.exit_code == 2 and "k1 must be a finite number" in res.output
    res = runner.invoke(main, ["index", str(tiny_beir), str(tmp_path / "i"), "-r", "hybrid",
                               "--components", "bm25,bm25", "--weights", "nan,1"])
    assert res.exit_code == 2 and "finite" in res.output and "analyze" not in res.output
    assert not (tmp_path / "i").exists()


def test_eval_tune_refusals_come_before_indexing(runner, tiny_beir, tmp_path):
    base = ["eval", str(tiny_beir), "-r", "hybrid", "--components", "bm25,bm25", "-o", str(tmp_path / "o"), "--tune"]
    res = runner.invoke(main, base + ["--weights", "1,2"])  # the weights would be overwritten by tuning
    assert res.exit_code == 2 and "--weights or --tune, not both" in res.output
    res = runner.invoke(main, base + ["--fusion", "sum"])
    assert res.exit_code == 1 and "takes no weights" in res.output and "analyze" not in res.output
    res = runner.invoke(main, base + ["--folds", "5"])  # tiny_beir has 3 judged test queries, no dev split
    assert res.exit_code == 1 and "3 queries cannot make 5" in res.output and "analyze" not in res.output
    assert not (tmp_path / "o").exists()


def test_index_shards_keeps_the_documents_settings(runner, tiny_beir, tmp_path):
    from conftest import shared_model
    from lsr import load_retriever

    model = str(shared_model("splade-tiny"))
    shards = tmp_path / "shards"
    res = runner.invoke(main, ["encode", str(tiny_beir), str(shards), "-r", "splade", "-m", model,
                               "--doc-max-length", "32"])
    assert res.exit_code == 0, res.output
    # -m without -r: the shards say which retriever (it was taken for the default bm25 and refused)
    res = runner.invoke(main, ["index", str(shards), str(tmp_path / "a"), "-m", model, "--query-max-length", "16"])
    assert res.exit_code == 0, res.output
    cfg = load_retriever(tmp_path / "a").encoder.config()
    assert (cfg["doc_max_length"], cfg["query_max_length"]) == (32, 16)  # doc_max_length was recorded as 256
    # a document option other than the shards' own would be recorded falsely: refused
    res = runner.invoke(main, ["index", str(shards), str(tmp_path / "b"), "-r", "splade", "--doc-max-length", "64"])
    assert res.exit_code == 2 and "encoded with doc_max_length=32, not 64" in res.output
    assert not (tmp_path / "b").exists()
