"""SPLADE encoder and retriever against independent references (plain transformers, brute force)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest_splade import (  # noqa: E402
    CORPUS,
    QUERIES,
    SPLADE_TINY,
    TEXTS,
    reference_splade,
    tiny_beir,
    tiny_mlm,
)

from lsr.encoders.splade import SpladeEncoder  # noqa: E402
from lsr.errors import ModelNotFoundError  # noqa: E402

__all__ = ["tiny_beir", "tiny_mlm"]  # fixtures used by name


def _dense(batch) -> np.ndarray:
    return batch.to_scipy().toarray()


@pytest.mark.parametrize("screen", [False, True])
def test_documents_match_plain_transformers(tiny_mlm, screen):
    enc = SpladeEncoder(tiny_mlm, doc_max_length=24, batch_size=3)
    enc.load_model()
    enc._set_screen(screen)
    got = enc.encode_documents(TEXTS)
    ref = reference_splade(tiny_mlm, TEXTS, 24)
    assert got.shape == ref.shape
    np.testing.assert_allclose(_dense(got), ref, atol=1e-4, rtol=0)
    # zeros are dropped, not stored; special tokens never get a weight
    assert np.all(got.data > 0)
    assert not np.isin(got.indices, enc.special_ids).any()


def test_queries_use_their_own_length(tiny_mlm):
    enc = SpladeEncoder(tiny_mlm, doc_max_length=40, query_max_length=6)
    q = ["heart disease blood pressure high cholesterol smoking stock market"]
    np.testing.assert_allclose(_dense(enc.encode_queries(q)), reference_splade(tiny_mlm, q, 6), atol=1e-4)
    np.testing.assert_allclose(_dense(enc.encode_documents(q)), reference_splade(tiny_mlm, q, 40), atol=1e-4)


@pytest.mark.skipif(not SPLADE_TINY.is_dir(), reason="needs ../shared/models/splade-tiny (checkout without ../shared beside it)")
def test_splade_tiny_matches_reference_and_screening_is_exact():
    texts = [f"{t} {x}" for t, x in CORPUS.values()] + ["what causes heart disease " * 30]
    enc = SpladeEncoder(SPLADE_TINY, threads=1)
    enc.load_model()
    ref = reference_splade(SPLADE_TINY, texts, 256)
    for screen in (True, False):
        enc._set_screen(screen)
        np.testing.assert_allclose(_dense(enc.encode_documents(texts)), ref, atol=1e-4, rtol=0)
    top = [t for t, _ in enc.decode(enc.encode_queries(["what causes heart disease"]), top_k=4)]
    assert top == ["heart", "causes", "cause", "disease"]  # MANIFEST.md's verification output


@pytest.mark.skipif(not SPLADE_TINY.is_dir(), reason="needs ../shared/models/splade-tiny (checkout without ../shared beside it)")
def test_splade_tiny_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    texts = [f"{t} {x}" for t, x in CORPUS.values()]
    mlm = MLMTransformer(str(SPLADE_TINY), max_seq_length=256)
    model = st.SparseEncoder(modules=[mlm, SpladePooling("max", activation_function="relu")], device="cpu")
    ref = model.encode_document(texts, convert_to_tensor=True).to_dense().numpy()
    enc = SpladeEncoder(SPLADE_TINY)
    got = _dense(enc.encode_documents(texts))
    ref[:, enc.special_ids] = 0  # sentence-transformers keeps special tokens; lsr removes them
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_pruning_top_k_and_min_weight(tiny_mlm):
    full = _dense(SpladeEncoder(tiny_mlm).encode_documents(TEXTS))
    pruned = _dense(SpladeEncoder(tiny_mlm, top_k=5, min_weight=0.05).encode_documents(TEXTS))
    for f, p in zip(full, pruned):
        keep = np.flatnonzero(f >= 0.05)
        keep = keep[np.argsort(-f[keep], kind="stable")][:5]
        want = np.zeros_like(f)
        want[keep] = f[keep]
        np.testing.assert_allclose(p, want, atol=1e-6)
    # queries are never pruned
    q = SpladeEncoder(tiny_mlm, top_k=1).encode_queries(["heart disease blood pressure"])
    assert q.nnz > 1


def test_decode_forms(tiny_mlm):
    enc = SpladeEncoder(tiny_mlm)
    b = enc.encode_queries(["heart disease", "stock market"])
    pairs = enc.decode(b, top_k=3, row=1)
    ids, w = b.row(1)
    order = np.argsort(-w, kind="stable")[:3]
    assert pairs == [(enc.vocab[ids[j]], round(float(w[j]), 4)) for j in order]
    assert enc.decode((ids, w), top_k=3) == pairs
    assert enc.decode(dict(zip(ids.tolist(), w.tolist())), top_k=3) == pairs
    assert enc.decode(_dense(b)[1], top_k=3) == pairs
    assert [w for _, w in enc.decode(b)] == sorted((w for _, w in enc.decode(b)), reverse=True)


def test_save_load_round_trip(tiny_mlm, tmp_path):
    enc = SpladeEncoder(tiny_mlm, doc_max_length=30, query_max_length=9, top_k=7, min_weight=0.01)
    enc.save(tmp_path)
    cfg = json.loads((tmp_path / "encoder.json").read_text())
    assert cfg["type"] == "splade" and cfg["model"] == str(tiny_mlm.resolve())
    assert not list(tmp_path.glob("*.safetensors"))  # weights are referenced, never copied
    back = SpladeEncoder.load(tmp_path)
    assert back.config() == enc.config()
    np.testing.assert_array_equal(_dense(back.encode_documents(TEXTS[:3])), _dense(enc.encode_documents(TEXTS[:3])))


def test_bad_inputs(tiny_mlm, tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json or vocab.txt"):
        SpladeEncoder(tmp_path)
    # offline here (conftest), so no hub: one ModelNotFoundError, not a ValueError after retries
    # (test_model_loading.py covers hub ids with an unreachable, silent and answering hub)
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-model-xyz: not a local directory"):
        SpladeEncoder("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        SpladeEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="top_k"):
        SpladeEncoder(tiny_mlm, top_k=0)
    (tmp_path / "encoder.json").write_text(json.dumps({"type": "bm25"}))
    with pytest.raises(ValueError, match="not 'splade'"):
        SpladeEncoder.load(tmp_path)


def test_retriever_matches_brute_force_and_round_trips(tiny_mlm, tmp_path):
    from lsr.retrievers.base import load_retriever
    from lsr.retrievers.sparse import SpladeRetriever

    r = SpladeRetriever.from_options(model=str(tiny_mlm), doc_max_length=32, query_max_length=16)
    ids = list(CORPUS)
    texts = [f"{t} {x}".strip() for t, x in CORPUS.values()]
    r.index(ids, texts)
    queries = list(QUERIES.values())
    res = r.search(queries, k=len(ids))
    docs = reference_splade(tiny_mlm, texts, 32)
    qs = reference_splade(tiny_mlm, queries, 16)
    exact = qs @ docs.T
    for i in range(len(queries)):
        got = dict(res.hits(i))
        for j, d in enumerate(ids):
            if exact[i, j] > 0:
                assert got[d] == pytest.approx(exact[i, j], abs=1e-3)
    r.save(tmp_path / "idx")
    back = load_retriever(tmp_path / "idx")
    assert isinstance(back, SpladeRetriever)
    res2 = back.search(queries, k=len(ids))
    np.testing.assert_array_equal(res2.ids, res.ids)
    np.testing.assert_allclose(res2.scores, res.scores, atol=1e-5)


def test_from_options_errors():
    from lsr.retrievers.sparse import SpladeRetriever

    with pytest.raises(ValueError, match="needs --model"):
        SpladeRetriever.from_options(model=None)
    with pytest.raises(ModelNotFoundError, match="/no/such/dir: no such model directory"):
        SpladeRetriever.from_options(model="/no/such/dir")


def test_cli_eval_splade(tiny_mlm, tiny_beir, tmp_path):
    from click.testing import CliRunner

    from lsr.cli import main
    from lsr.metrics import evaluate
    from lsr.io.runs import read_run

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", "splade", "-m", str(tiny_mlm), "-o", str(out),
                                    "--doc-max-length", "32", "--query-max-length", "16"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    from conftest_splade import QRELS

    assert metrics["ndcg@10"] == pytest.approx(evaluate(QRELS, read_run(out / "run.trec"), ["ndcg@10"])["ndcg@10"])
    res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", "splade", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--model" in res.output


@pytest.mark.gpu
def test_gpu_autocast_close_to_cpu(tiny_mlm):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = _dense(SpladeEncoder(tiny_mlm, device="cpu").encode_documents(TEXTS))
    for precision in ("fp32", "bf16"):
        gpu = _dense(SpladeEncoder(tiny_mlm, device="cuda", precision=precision).encode_documents(TEXTS))
        np.testing.assert_allclose(gpu, cpu, atol=1e-4 if precision == "fp32" else 0.1)
