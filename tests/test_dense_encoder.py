"""DenseEncoder against plain transformers code and sentence-transformers itself on tiny generated
sentence-transformers models; the helpers of lsr/encoders/embedding.py that MultiVectorEncoder
shares (truncation to the model's positions, encoder.json) through both encoders."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest_dense import HIDDEN, build_sentence_transformer  # noqa: E402

from lsr.encoders.embedding import DenseEncoder, cache_key  # noqa: E402
from lsr.encoders.multivector import MultiVectorEncoder  # noqa: E402
from lsr.errors import IndexFormatError  # noqa: E402

TEXTS = ["what causes heart disease", "Heart disease is mostly caused by high blood pressure, high "
         "cholesterol and smoking.", "", "stock market", "The stock market fell sharply on Tuesday."]


@pytest.fixture(scope="session")
def st_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("st")
    return {p: build_sentence_transformer(base / p, pooling=p, normalize=(p != "cls"),
                                          prompts={"query": "query: ", "document": "passage: "} if p == "mean" else None)
            for p in ("mean", "cls", "lasttoken")}


def reference(model_dir, texts, pooling, normalize, prefix="", max_length=64):
    """Straight transformers: tokenize each text alone (no padding), pool, normalise."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    net = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(prefix + t, return_tensors="pt", truncation=True, max_length=max_length)
            h = net(**enc).last_hidden_state[0]
            v = h.mean(0) if pooling == "mean" else h[0] if pooling == "cls" else h[-1]
            if normalize:
                v = v / v.norm()
            out.append(v.numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_matches_plain_transformers(st_dirs, pooling):
    enc = DenseEncoder(st_dirs[pooling], batch_size=2, device="cpu")
    assert enc.pooling == pooling and enc.normalize == (pooling != "cls") and enc.dim == 32
    prefix = "passage: " if pooling == "mean" else ""
    got = enc.encode_documents(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, reference(st_dirs[pooling], TEXTS, pooling, enc.normalize, prefix), atol=2e-5)


def test_query_prefix_and_lengths(st_dirs):
    enc = DenseEncoder(st_dirs["mean"], query_max_length=4, device="cpu")
    assert (enc.query_prefix, enc.document_prefix) == ("query: ", "passage: ")
    np.testing.assert_allclose(enc.encode_queries(TEXTS[:2]),
                               reference(st_dirs["mean"], TEXTS[:2], "mean", True, "query: ", 4), atol=2e-5)
    assert enc.encode_queries([]).shape == (0, 32)


def test_batching_does_not_change_vectors(st_dirs):
    a = DenseEncoder(st_dirs["mean"], batch_size=1, device="cpu").encode_documents(TEXTS)
    b = DenseEncoder(st_dirs["mean"], batch_size=16, device="cpu").encode_documents(TEXTS)
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_embedding_cache_and_save_load(st_dirs, tmp_path):
    enc = DenseEncoder(st_dirs["mean"], device="cpu", cache_dir=tmp_path / "cache")
    first = enc.encode_documents(TEXTS)
    key = cache_key(enc.config(), "documents", TEXTS)
    assert (tmp_path / "cache" / f"{key}.dense.npy").is_file()
    np.testing.assert_array_equal(enc.encode_documents(TEXTS), first)
    enc.save(tmp_path)
    again = DenseEncoder.load(tmp_path, device="cpu")
    assert again.config() == enc.config()


def test_bad_arguments(st_dirs, tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        DenseEncoder(st_dirs["mean"], pooling="max")
    with pytest.raises(FileNotFoundError):
        DenseEncoder(str(tmp_path / "missing" / "model"))


def test_dense_module_matches_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers")
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    d = build_sentence_transformer(tmp_path / "st", pooling="mean", normalize=False, max_seq_length=40)
    modules = json.loads((d / "modules.json").read_text()) + [
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "2_Dense").mkdir()
    (d / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": HIDDEN, "out_features": 12, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh"}))
    g = torch.Generator().manual_seed(3)
    save_file({"linear.weight": torch.randn(12, HIDDEN, generator=g), "linear.bias": torch.randn(12, generator=g)},
              str(d / "2_Dense" / "model.safetensors"))
    texts = ["heart disease", "what the stock market did on a long and busy tuesday afternoon", ""]
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, convert_to_numpy=True)
    enc = DenseEncoder(d, device="cpu", batch_size=2)
    assert enc.dim == 12
    np.testing.assert_allclose(enc.encode_documents(texts), ref, atol=2e-5)


def test_max_length_beyond_the_model_positions_truncates(st_dirs):
    long_text = " ".join(["heart"] * 300)  # the tiny model has 128 positions
    for cls in (DenseEncoder, MultiVectorEncoder):
        wide = cls(st_dirs["mean"], device="cpu", doc_max_length=256, query_max_length=200)
        fits = cls(st_dirs["mean"], device="cpu", doc_max_length=128, query_max_length=128)
        for kind in ("encode_documents", "encode_queries"):
            a, b = getattr(wide, kind)([long_text]), getattr(fits, kind)([long_text])
            a, b = (a, b) if cls is DenseEncoder else (a.vectors, b.vectors)
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-5)


@pytest.mark.parametrize("module, cls", [("lsr.encoders.embedding", "DenseEncoder"),
                                         ("lsr.encoders.multivector", "MultiVectorEncoder")])
def test_damaged_encoder_json_is_named(tmp_path, module, cls):
    encoder_cls = getattr(importlib.import_module(module), cls)
    path = tmp_path / "encoder.json"
    with pytest.raises(IndexFormatError, match="encoder.json: missing"):
        encoder_cls.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(IndexFormatError, match="encoder.json: not readable JSON"):
        encoder_cls.load(tmp_path)
    path.write_text(json.dumps({"model": "x"}))
    with pytest.raises(IndexFormatError, match=r"encoder.json: missing field\(s\) .*query_max_length"):
        encoder_cls.load(tmp_path)


@pytest.mark.slow
def test_minilm_matches_manifest():
    from conftest import shared_model

    enc = DenseEncoder(shared_model("all-MiniLM-L6-v2"), device="cpu")
    q = enc.encode_queries(["what causes heart disease"])
    d = enc.encode_documents([TEXTS[1], "The stock market fell sharply on Tuesday after the announcement."])
    assert abs(float(q[0] @ d[0]) - 0.8320) < 2e-3


@pytest.mark.gpu
def test_cuda_autocast_close_to_cpu(st_dirs):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = DenseEncoder(st_dirs["mean"], device="cpu").encode_documents(TEXTS)
    gpu = DenseEncoder(st_dirs["mean"], device="cuda").encode_documents(TEXTS)
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)
