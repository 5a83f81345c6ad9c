"""HybridRetriever, tuning without test leakage, and the fuse / report / eval --retriever hybrid CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lsr.cli import main
from lsr.io.runs import read_run, write_run
from lsr.retrievers.base import load_retriever
from lsr.fusion.combine import fuse
from lsr.retrievers.hybrid import HybridRetriever, parse_components
from lsr.retrievers.sparse import BM25Retriever
from lsr.fusion.tuning import cross_validate, make_folds, tune_weights, weight_grid

TOPICS = {
    "heart": "heart disease blood pressure cholesterol artery cardiac",
    "market": "stock market shares trading investors prices",
    "lung": "lung cancer smoking tumour breathing chest",
    "brain": "brain neurons memory cortex cognition sleep",
    "soil": "soil crops farming nitrogen harvest irrigation",
}


def _synthetic(seed: int = 0, n_docs: int = 60, n_queries: int = 20):
    """A small corpus of topic documents; each query's relevant document is the one it copies words from."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    ids, texts = [], []
    for i in range(n_docs):
        words = TOPICS[names[i % len(names)]].split() + TOPICS[names[(i * 3 + 1) % len(names)]].split()[:2]
        texts.append(" ".join(rng.choice(words, size=12)) + f" item{i}")
        ids.append(f"doc{i:03d}")
    queries, qrels = {}, {}
    for j in range(n_queries):
        d = int(rng.integers(n_docs))
        queries[f"q{j:02d}"] = " ".join(rng.choice(texts[d].split(), size=3)) + f" item{d}"
        qrels[f"q{j:02d}"] = {ids[d]: 1}
    return ids, texts, queries, qrels


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic()


@pytest.fixture(scope="module")
def hybrid(synthetic) -> HybridRetriever:
    ids, texts, _, _ = synthetic
    h = HybridRetriever([BM25Retriever(), BM25Retriever(k1=0.3, b=1.0)], norm="zmuv", fusion="wsum",
                        weights=[0.7, 0.3], depth=20)
    h.index(ids, texts)
    return h


def test_search_equals_fusing_the_component_runs(synthetic, hybrid):
    _, _, queries, _ = synthetic
    qids = list(queries)
    texts = [queries[q] for q in qids]
    comp_runs = [c.search(texts, k=20).to_run(qids) for c in hybrid.components]
    ref = fuse(comp_runs, norm="zmuv", method="wsum", weights=[0.7, 0.3], k=5)
    got = hybrid.search(texts, k=5).to_run(qids)
    assert {q: list(d) for q, d in got.items()} == {q: list(d) for q, d in ref.items()}
    for q in ref:
        assert got[q] == pytest.approx(ref[q], abs=1e-6)


def test_save_and_load_roundtrip(tmp_path, synthetic, hybrid):
    _, _, queries, qrels = synthetic
    hybrid.tuning = {"note": "kept"}
    hybrid.save(tmp_path / "h")
    assert (tmp_path / "h" / "components" / "0-bm25" / "manifest.json").is_file()
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert manifest["retriever"] == "hybrid" and manifest["config"]["weights"] == [0.7, 0.3]
    loaded = load_retriever(tmp_path / "h")
    assert isinstance(loaded, HybridRetriever)
    assert loaded.config() == hybrid.config()
    texts = list(queries.values())
    a, b = hybrid.search(texts, k=5), loaded.search(texts, k=5)
    assert np.array_equal(a.doc_ids[a.ids], b.doc_ids[b.ids])
    np.testing.assert_allclose(a.scores, b.scores)


def test_tune_stores_weights_and_cv_never_sees_its_fold(synthetic):
    ids, texts, queries, qrels = synthetic
    h = HybridRetriever([BM25Retriever(), BM25Retriever(k1=0.3, b=1.0)], depth=20)
    h.index(ids, texts)
    cv = h.tune(queries, qrels, folds=4, step=0.25)
    assert h.weights is not None and abs(sum(h.weights) - 1) < 1e-9
    assert h.tuning["fold_weights"] == cv.fold_weights and set(cv.run) == set(queries)
    assert h.tuning["selection"] == cv.selection == "1se"
    assert h.tuning["fold_best_weights"] == [t.best_weights for t in cv.fold_tuning]
    # each fold's weights are what tuning on the *other* folds' queries alone gives
    qids = list(queries)
    runs = [c.search([queries[q] for q in qids], k=20).to_run(qids) for c in h.components]
    for part, w in zip(cv.fold_queries, cv.fold_weights):
        train = {q: qrels[q] for q in qrels if q not in part}
        trunc = [{q: r[q] for q in qids if q not in part} for r in runs]
        assert tune_weights(trunc, train, step=0.25, depth=20).weights == w


def test_weight_grid_and_folds():
    g = weight_grid(3, 0.1)
    assert len(g) == 66 and np.allclose(g.sum(1), 1)
    folds = make_folds([f"q{i}" for i in range(11)], 3, seed=1)
    assert sorted(sum(folds, [])) == sorted(f"q{i}" for i in range(11)) and [len(f) for f in folds] == [4, 4, 3]
    with pytest.raises(ValueError, match="folds"):
        make_folds(["a"], 1)


def test_coordinate_ascent_reaches_the_grid_optimum_on_two_runs(synthetic):
    _, _, queries, qrels = synthetic
    runs = [{q: {"doc000": 1.0, "doc001": 0.5} for q in queries},
            {q: {d: 1.0} for q, rel in qrels.items() for d in rel}]
    g = tune_weights(runs, qrels, search="grid")
    c = tune_weights(runs, qrels, search="coordinate")
    assert c.score == pytest.approx(g.score) and g.score == 1.0


def test_parse_components():
    assert parse_components("bm25,splade=/m/s") == [("bm25", None), ("splade", "/m/s")]
    with pytest.raises(ValueError):
        parse_components("bm25,hybrid")


# ---------------------------------------------------------------------------- CLI
def _runs_on_disk(tmp_path: Path, synthetic):
    ids, texts, queries, qrels = synthetic
    qids = list(queries)
    paths = []
    for i, r in enumerate([BM25Retriever(), BM25Retriever(k1=0.3, b=1.0)]):
        r.index(ids, texts)
        write_run(r.search([queries[q] for q in qids], k=20).to_run(qids), tmp_path / f"r{i}.trec")
        paths.append(tmp_path / f"r{i}.trec")
    with open(tmp_path / "qrels.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, rel in qrels.items():
            for d, s in rel.items():
                f.write(f"{q}\t{d}\t{s}\n")
    return paths, tmp_path / "qrels.tsv"


def test_cli_fuse_matches_library(tmp_path, synthetic):
    paths, _ = _runs_on_disk(tmp_path, synthetic)
    out = tmp_path / "fused.trec"
    res = CliRunner().invoke(main, ["fuse", *map(str, paths), "--norm", "min-max", "--fusion", "wsum",
                                    "--weights", "0.6,0.4", "--depth", "10", "--k", "10", "-o", str(out)])
    assert res.exit_code == 0, res.output
    ref = fuse([read_run(p) for p in paths], norm="min-max", method="wsum", weights=[0.6, 0.4], depth=10, k=10)
    got = read_run(out)
    assert {q: list(d) for q, d in got.items()} == {q: list(d) for q, d in ref.items()}
    bad = CliRunner().invoke(main, ["fuse", *map(str, paths), "--weights", "1,2,3", "-o", str(out)])
    assert bad.exit_code != 0 and "3 values for 2 runs" in bad.output


def test_cli_fuse_tune_writes_cross_validated_run(tmp_path, synthetic):
    paths, qrels = _runs_on_disk(tmp_path, synthetic)
    out, js = tmp_path / "cv.trec", tmp_path / "cv.json"
    res = CliRunner().invoke(main, ["fuse", *map(str, paths), "--tune", "--qrels", str(qrels), "--folds", "4", "--step", "0.25",
                                    "-o", str(out), "--tuning-json", str(js)])
    assert res.exit_code == 0, res.output
    report = json.loads(js.read_text())
    cv = cross_validate([read_run(p) for p in paths], read_run_qrels(qrels), folds=4, step=0.25, depth=1000, k=1000)
    assert report["fold_weights"] == cv.fold_weights and report["cv_score"] == pytest.approx(cv.score)
    assert set(read_run(out)) == set(cv.run)


def read_run_qrels(path):
    from lsr.io.readers import read_qrels

    return read_qrels(path)


def test_cli_report_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    for ds, vals in (("scifact", {"bm25": 0.6789, "hybrid": 0.73}), ("nfcorpus", {"bm25": 0.32, "hybrid": 0.31})):
        for name, v in vals.items():
            d = tmp_path / ds / name
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"ndcg@10": v, "recall@100": v / 2}))
            (d / "config.json").write_text(json.dumps({"dataset": f"/data/{ds}"}))
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    res = CliRunner().invoke(main, ["report", str(tmp_path), "-o", str(md), "--plot", str(png),
                                    "--metric", "ndcg@10", "--metric", "recall@100"])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "| ndcg@10 | nfcorpus | scifact |" in text
    assert "| hybrid | 0.3100 | **0.7300** |" in text and "| bm25 | **0.3200** | 0.6789 |" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def _write_beir(root: Path, synthetic, dev: bool) -> Path:
    ids, texts, queries, qrels = synthetic
    root.mkdir()
    with open(root / "corpus.jsonl", "w") as f:
        for i, t in zip(ids, texts):
            f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for q, t in queries.items():
            f.write(json.dumps({"_id": q, "text": t}) + "\n")
    (root / "qrels").mkdir()
    qids = list(qrels)
    splits = {"test": qids[10:], "dev": qids[:10]} if dev else {"test": qids}
    for split, qs in splits.items():
        with open(root / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in qs:
                for d, s in qrels[q].items():
                    f.write(f"{q}\t{d}\t{s}\n")
    return root


@pytest.mark.parametrize("dev", [False, True])
def test_cli_eval_hybrid_tune(tmp_path, synthetic, dev):
    data = _write_beir(tmp_path / "ds", synthetic, dev)
    out, saved = tmp_path / "out", tmp_path / "saved"
    res = CliRunner().invoke(main, ["eval", str(data), "-r", "hybrid", "--components", "bm25,bm25",
                                    "--norm", "z-score", "--fusion", "wsum", "--tune", "--folds", "2",
                                    "-k", "10", "--depth", "10", "-o", str(out), "--save-index", str(saved)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hybrid"]["norm"] == "zmuv" and cfg["hybrid"]["weights"] is not None
    assert ("dev queries" in res.output) == dev and ("cross-validated" in res.output) == (not dev)
    assert load_retriever(saved).weights == cfg["hybrid"]["weights"]
    assert len(read_run(out / "run.trec")) == (10 if dev else 20)


def test_cli_eval_hybrid_with_weights(tmp_path, synthetic):
    data = _write_beir(tmp_path / "ds", synthetic, False)
    res = CliRunner().invoke(main, ["eval", str(data), "-r", "hybrid", "--components", "bm25,bm25",
                                    "--fusion", "rrf", "--weights", "1,2", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(main, ["eval", str(data), "-r", "bm25", "--tune", "-o", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and "--tune needs --retriever hybrid" in bad.output


# ---------------------------------------------------------------------------- edges of the API
def _small_bm25(ids, texts) -> BM25Retriever:
    r = BM25Retriever()
    r.index(ids, texts)
    return r


@pytest.mark.parametrize("prf", ["none", "after", "before"])
def test_hybrid_k_is_checked_and_capped_at_the_documents(prf):
    a = _small_bm25(["d1", "d2", "d3"], ["heart disease", "stock markets", "heart attack"])
    b = _small_bm25(["d3", "d4"], ["heart attack", "heart failure"])
    h = HybridRetriever([a, b], depth=2, prf=prf)
    res = h.search(["heart", "markets"], k=10)
    assert res.ids.shape == (2, 4)  # 4 documents in all: not 10 wide (nor depth wide for "before")
    assert {d for d, _ in res.hits(0)} <= {"d1", "d2", "d3", "d4"}
    with pytest.raises(ValueError, match="k must be a positive integer"):
        h.search("heart", k=0)  # every other retriever refuses it; the hybrid returned (1, 0)


def test_hybrid_notices_a_component_reindexed_on_its_own():
    a = _small_bm25(["d1", "d2"], ["heart disease", "stock markets"])
    b = _small_bm25(["d1", "d2"], ["heart disease", "stock markets"])
    h = HybridRetriever([a, b])
    assert h.search("heart", k=1).hits(0)[0][0] == "d1"
    a.index(["x1", "x2", "x3"], ["cats", "dogs", "heart heart heart"])
    got = {d for d, _ in h.search("heart", k=5).hits(0)}
    assert got == {"x3", "d1"}  # the stale id map read x3 (position 2) through the old ids


def test_hybrid_weights_and_depth_are_checked():
    comps = [BM25Retriever(), BM25Retriever()]
    with pytest.raises(ValueError, match="finite"):
        HybridRetriever(comps, weights=[float("nan"), 1.0])  # failed only at search time
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        HybridRetriever(comps, depth=-1)
    # the CLI's spelling works from Python too (it was read one character at a time)
    assert HybridRetriever.from_options(components="bm25,bm25", weights="0.3, 0.7").weights == [0.3, 0.7]
