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
