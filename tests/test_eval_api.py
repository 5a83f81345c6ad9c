"""`lsr eval` and the Python API (lsr.evaluate_beir with a retriever built from its options)
write identical run files for every retriever; the CLI's option vocabulary and refusals."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import shared_model
from lsr.cli import main
from lsr.eval.beir import evaluate_beir
from lsr.retrievers.base import retriever_class


def _conditions():
    splade, minilm = "splade-tiny", "all-MiniLM-L6-v2"
    idf = "opensearch-inference-free-idf/idf.json"
    return [
        ("bm25", {"k1": 1.2, "b": 0.75}, []),
        ("splade", {"model": splade, "query_max_length": 32}, []),
        ("inference-free", {"model": splade, "idf": idf}, []),
        ("dense", {"model": minilm}, []),
        ("maxsim", {"model": minilm}, []),
        ("muvera", {"model": minilm, "fde_reps": 2, "fde_k_sim": 2, "fde_d_proj": 0, "candidates": 4}, []),
        ("hybrid", {"components": f"bm25,splade={splade},dense={minilm}", "norm": "zmuv", "fusion": "rrf"}, []),
    ]


def _resolve(options: dict) -> dict:
    out = {}
    for key, value in options.items():
        if key in ("model", "idf"):
            value = str(shared_model(value))
        elif key == "components":
            parts = []
            for part in value.split(","):
                name, _, model = part.partition("=")
                parts.append(f"{name}={shared_model(model)}" if model else name)
            value = ",".join(parts)
        out[key] = value
    return out


def _flags(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@pytest.mark.parametrize("name,options,_", _conditions(), ids=[c[0] for c in _conditions()])
def test_cli_eval_and_python_api_write_identical_runs(tiny_beir, tmp_path, name, options, _):
    options = _resolve(options)
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", name, *_flags(options), "-k", "5",
                                    "-o", str(cli_out)])
    assert res.exit_code == 0, res.output
    report = evaluate_beir(tiny_beir, retriever_class(name).from_options(**options), api_out, k=5)
    assert (cli_out / "run.trec").read_bytes() == (api_out / "run.trec").read_bytes()
    assert json.loads((cli_out / "metrics.json").read_text()) == report.metrics
    assert json.loads((cli_out / "config.json").read_text())["options"] == options


def test_an_option_of_another_retriever_is_refused(tiny_beir, tmp_path):
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", "bm25", "--doc-max-length", "64",
                                    "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--doc-max-length does not apply to --retriever bm25" in res.output
    assert not (tmp_path / "o").exists()


def test_zero_is_a_value_not_unset(tiny_beir, tmp_path):
    res = CliRunner().invoke(main, ["index", str(tiny_beir), str(tmp_path / "i"), "-r", "bm25", "--k1", "0",
                                    "--retriever-dir"])
    assert res.exit_code == 0, res.output
    from lsr import load_retriever

    assert load_retriever(tmp_path / "i").encoder.k1 == 0.0


def test_hybrid_without_components_is_refused(tiny_beir, tmp_path):
    res = CliRunner().invoke(main, ["index", str(tiny_beir), str(tmp_path / "h"), "-r", "hybrid"])
    assert res.exit_code == 2 and "components" in res.output
    assert not (tmp_path / "h").exists()


def test_hybrid_refuses_an_option_no_component_has(tiny_beir, tmp_path):
    res = CliRunner().invoke(main, ["index", str(tiny_beir), str(tmp_path / "h"), "-r", "hybrid",
                                    "--components", "bm25,bm25", "--embedding-cache", str(tmp_path)])
    assert res.exit_code == 2 and "embedding_cache" in res.output


def test_help_lists_the_chosen_retrievers_options_first(tiny_beir):
    res = CliRunner().invoke(main, ["eval", "-r", "dense", "--help"])
    assert res.exit_code == 0
    text = res.output
    mine = text.index("Options of --retriever dense:")
    assert mine < text.index("--embedding-cache") < text.index("Options of other retrievers:") < text.index("--k1")


def test_same_names_in_eval_and_fuse():
    runner = CliRunner()
    eval_help, fuse_help = runner.invoke(main, ["eval", "--help"]).output, runner.invoke(main, ["fuse", "--help"]).output
    for flag in ("-k, --k", "--fusion", "--norm", "--weights", "--depth", "--tune", "--folds"):
        assert flag in eval_help and flag in fuse_help, flag
    assert "--method" not in fuse_help and "--fusion-depth" not in eval_help


def test_python_defaults_equal_cli_defaults(tiny_beir, tmp_path):
    # the inference-free query length defaults to the tokenizer's limit in both (not 64 in the CLI)
    model, idf = shared_model("splade-tiny"), shared_model("opensearch-inference-free-idf/idf.json")
    res = CliRunner().invoke(main, ["index", str(tiny_beir), str(tmp_path / "if"), "-r", "inference-free",
                                    "-m", str(model), "--idf", str(idf), "--retriever-dir"])
    assert res.exit_code == 0, res.output
    from lsr import InferenceFreeRetriever, load_retriever

    cli = load_retriever(tmp_path / "if").encoder.config()
    api = InferenceFreeRetriever(str(model), idf=str(idf)).encoder.config()
    cli.pop("idf"), api.pop("idf")  # the saved retriever holds its own copy of the table
    assert cli == api and api["query_max_length"] == 512


def test_one_string_is_one_query(tiny_beir):
    from lsr import BM25Retriever, load_beir

    ds = load_beir(tiny_beir)
    r = BM25Retriever()
    r.index(ds.corpus.ids, ds.corpus.all_contents())
    one = r.search("heart disease smoking", k=3)
    assert len(one) == 1 and one.hits(0) == r.search(["heart disease smoking"], k=3).hits(0)
    big = r.search(["heart"], k=10**9)  # k beyond the corpus: capped, not allocated
    assert big.ids.shape == (1, len(ds.corpus))
    assert big.doc_ids[big.ids].tolist()[0].count(None) == (big.ids < 0).sum()


def test_blank_documents_match_nothing_for_learned_sparse(tmp_path):
    from lsr import SpladeRetriever

    r = SpladeRetriever(str(shared_model("splade-tiny")))
    r.index(["a", "blank", "b"], ["heart disease", "  ", "stock markets"])
    res = r.search(["heart disease", "stock"], k=3)
    assert "blank" not in {d for i in range(2) for d, _ in res.hits(i)}
    assert r.inverted_index.search(r.encoder.encode_queries(["heart"]), k=3).ids.shape == (1, 3)


def test_evaluate_beir_records_options_as_json(tiny_beir, tmp_path):
    from pathlib import Path

    import numpy as np

    from lsr import BM25Retriever

    # by default the retriever's own options (they were recorded as {})
    evaluate_beir(tiny_beir, BM25Retriever(k1=1.2), tmp_path / "a", k=5)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["options"] == {"k1": 1.2, "b": 0.4}
    # a Python caller's paths and numpy numbers: config.json failed to write after the whole run
    given = {"k1": np.float64(1.2), "note": Path("runs") / "x", "weights": (1, 2)}
    report = evaluate_beir(tiny_beir, BM25Retriever(k1=1.2), tmp_path / "b", k=5, options=given)
    recorded = json.loads((tmp_path / "b" / "config.json").read_text())["options"]
    assert recorded == {"k1": 1.2, "note": str(Path("runs") / "x"), "weights": [1, 2]} == report.config["options"]
