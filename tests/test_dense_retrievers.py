"""Dense, MaxSim and MUVERA retrievers through Python and the CLI on the tiny BEIR set and an empty corpus."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

from click.testing import CliRunner  # noqa: E402
from conftest_dense import st_model  # noqa: E402

from lsr import load_beir, load_retriever, read_run  # noqa: E402
from lsr.cli import main  # noqa: E402
from lsr.index.muvera import FDEConfig  # noqa: E402
from lsr.retrievers.base import RETRIEVERS, retriever_class  # noqa: E402

__all__ = ["st_model"]  # fixture used by name


def test_registered():
    for name in ("dense", "maxsim", "muvera"):
        assert name in RETRIEVERS and retriever_class(name).name == name


def test_dense_retriever_equals_brute_force(st_model, tiny_beir, tmp_path):
    ds = load_beir(tiny_beir)
    r = retriever_class("dense").from_options(model=str(st_model), device="cpu", doc_max_length=48,
                                              query_max_length=16, embedding_cache=str(tmp_path / "cache"))
    r.index(ds.corpus.ids, ds.corpus.all_contents())
    qs = list(ds.queries.values())
    res = r.search(qs, k=4)
    d = r.encoder.encode_documents(ds.corpus.all_contents())
    q = r.encoder.encode_queries(qs)
    ref = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(res.ids, ref)
    r.save(tmp_path / "saved")
    again = load_retriever(tmp_path / "saved")
    np.testing.assert_array_equal(again.search(qs, k=4).ids, res.ids)


def test_muvera_with_all_candidates_equals_maxsim(st_model, tiny_beir, tmp_path):
    ds = load_beir(tiny_beir)
    opts = dict(model=str(st_model), device="cpu", doc_max_length=48, query_max_length=16)
    exact = retriever_class("maxsim").from_options(**opts)
    exact.index(ds.corpus.ids, ds.corpus.all_contents())
    mu = retriever_class("muvera").from_options(**opts, fde_reps=3, fde_k_sim=2, fde_d_proj=8, candidates=50)
    mu.index(ds.corpus.ids, ds.corpus.all_contents())
    qs = list(ds.queries.values())
    a, b = exact.search(qs, k=3), mu.search(qs, k=3)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    for r in (exact, mu):
        r.save(tmp_path / r.name)
        np.testing.assert_array_equal(load_retriever(tmp_path / r.name).search(qs, k=3).ids, a.ids)
    assert json.loads((tmp_path / "muvera" / "index" / "manifest.json").read_text())["fde"]["reps"] == 3


def test_retrievers_on_an_empty_corpus_and_no_queries(st_model, tmp_path):
    opts = dict(model=str(st_model), device="cpu", doc_max_length=48, query_max_length=16)
    for name, extra in (("dense", {}), ("maxsim", {}), ("muvera", dict(fde_reps=2, fde_k_sim=2, fde_d_proj=8))):
        r = retriever_class(name).from_options(**opts, **extra)
        r.index([], [])
        assert r.search(["heart disease"], k=3).ids.shape == (1, 0)  # k capped at the empty corpus
        assert r.search([], k=3).ids.shape == (0, 0)
        r.save(tmp_path / name)
        assert load_retriever(tmp_path / name).search(["heart"], k=2).ids.shape == (1, 0)
    mv = retriever_class("maxsim").from_options(**opts).encoder
    assert len(mv.encode_documents([])) == 0 and len(mv.encode_queries([])) == 0


def test_muvera_identity_projection_option_is_kept(st_model, tmp_path):
    opts = dict(model=str(st_model), device="cpu", doc_max_length=48, query_max_length=16)
    texts = ["heart disease risk", "blood pressure", "cancer cells divide"]
    r = retriever_class("muvera").from_options(**opts, fde_d_proj=0, fde_k_sim=1, fde_reps=2)
    r.index(["a", "b", "c"], texts)
    config = r.fde_index.encoder.config
    assert config.d_proj is None and config.identity and config.k_sim == 1 and config.reps == 2
    r.save(tmp_path / "m")
    loaded = load_retriever(tmp_path / "m")
    loaded.index(["a", "b", "c"], texts)  # re-indexing a loaded retriever keeps its settings
    assert loaded.fde_index.encoder.config == config
    default = retriever_class("muvera").from_options(**opts)
    default.index(["a", "b", "c"], texts)
    assert default.fde_index.encoder.config == FDEConfig(dim=config.dim)


@pytest.mark.parametrize("retriever, extra", [("dense", ["--index-type", "hnsw"]), ("maxsim", []),
                                              ("muvera", ["--fde-reps", "2", "--fde-k-sim", "2"])])
def test_cli_eval_index_search(st_model, tiny_beir, tmp_path, retriever, extra):
    runner = CliRunner()
    common = ["-r", retriever, "-m", str(st_model), "--device", "cpu", "--doc-max-length", "48", *extra]
    out = tmp_path / "eval"
    res = runner.invoke(main, ["eval", str(tiny_beir), *common, "-o", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["ndcg@10"] <= 1
    res = runner.invoke(main, ["index", str(tiny_beir), str(tmp_path / "idx"), *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["search", str(tmp_path / "idx"), "--query", "heart disease", "-k", "2",
                               "-o", str(tmp_path / "run.trec")])
    assert res.exit_code == 0, res.output
    assert len(read_run(tmp_path / "run.trec")["q0"]) == 2


def test_missing_model_is_a_clear_cli_error(tiny_beir, tmp_path):
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", "dense", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "--model" in res.output


def test_cli_names_a_missing_model(tiny_beir, tmp_path):
    missing = tmp_path / "no-such-model"
    for retriever in ("dense", "maxsim", "muvera"):
        res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", retriever, "-m", str(missing),
                                        "--device", "cpu", "-o", str(tmp_path / "out")])
        assert res.exit_code != 0 and str(missing) in res.output and "Repo id" not in res.output, res.output
