"""MultiVectorEncoder on tiny generated ColBERT checkpoints (colbert-ir and PyLate) and the stand-in mode."""
from __future__ import annotations

import string

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest_dense import build_bert, build_colbert_ir, build_pylate, build_sentence_transformer  # noqa: E402

from lsr.encoders.embedding import DenseEncoder  # noqa: E402
from lsr.encoders.multivector import MultiVectorEncoder, encode_dense_and_tokens  # noqa: E402

QUERIES = ["what causes heart disease?", "stock market"]
DOCS = ["Heart disease is mostly caused by high blood pressure, high cholesterol and smoking.",
        "The stock market fell sharply on Tuesday (after the announcement)!", ""]


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("mv")
    return {"colbert-ir": build_colbert_ir(base / "colbert"), "pylate": build_pylate(base / "pylate"),
            "bert": build_bert(base / "bert"), "st": build_sentence_transformer(base / "st", max_seq_length=40)}


def _bert_and_linear(path, linear_file=None):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    net = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    state = load_file(str(linear_file or path / "model.safetensors"))
    return tok, net, state["linear.weight"]


def colbert_ir_reference(path, texts, query, maxlen):
    """colbert-ir's QueryTokenizer/DocTokenizer + ColBERT.query/doc, written out."""
    tok, net, w = _bert_and_linear(path)
    marker = tok.convert_tokens_to_ids("[unused0]" if query else "[unused1]")
    enc = tok([". " + t for t in texts], padding="max_length" if query else "longest", truncation=True,
              max_length=maxlen, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ids[:, 1] = marker
    if query:
        ids[ids == tok.pad_token_id] = tok.mask_token_id
    with torch.no_grad():
        out = torch.nn.functional.normalize(net(input_ids=ids, attention_mask=mask).last_hidden_state @ w.T, dim=-1)
    skip = {tok.encode(p, add_special_tokens=False)[0] for p in string.punctuation}
    result = []
    for r in range(len(texts)):
        if query:
            keep = torch.ones(ids.shape[1], dtype=torch.bool)
        else:
            keep = torch.tensor([(i not in skip) and i != tok.pad_token_id for i in ids[r].tolist()])
        result.append(out[r][keep].numpy())
    return result


def pylate_reference(path, texts, query, maxlen):
    """PyLate's ColBERT.encode: prefix token, [MASK] expansion for queries, skiplist for documents."""
    tok, net, w = _bert_and_linear(path, path / "1_Dense" / "model.safetensors")
    prefix = "[Q] " if query else "[D] "
    enc = tok([prefix + t for t in texts], padding="max_length" if query else "longest", truncation=True,
              max_length=maxlen, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if query:
        ids[ids == tok.pad_token_id] = tok.mask_token_id
    with torch.no_grad():
        out = torch.nn.functional.normalize(net(input_ids=ids, attention_mask=mask).last_hidden_state @ w.T, dim=-1)
    skip = {tok.convert_tokens_to_ids(p) for p in string.punctuation}
    result = []
    for r in range(len(texts)):
        keep = torch.ones(ids.shape[1], dtype=torch.bool) if query else torch.tensor(
            [(i not in skip) and m == 1 for i, m in zip(ids[r].tolist(), mask[r].tolist())])
        result.append(out[r][keep].numpy())
    return result


def _assert_sets_close(mv, expected, atol):
    assert len(mv) == len(expected)
    for i, e in enumerate(expected):
        np.testing.assert_allclose(np.asarray(mv[i], dtype=np.float32), e, atol=atol)


def test_colbert_ir_checkpoint(models):
    enc = MultiVectorEncoder(models["colbert-ir"], device="cpu", batch_size=2)
    assert (enc.mode, enc.checkpoint, enc.dim, enc.query_max_length, enc.doc_max_length) == \
        ("colbert", "colbert-ir", 16, 12, 40)
    q = enc.encode_queries(QUERIES)
    assert q.vectors.dtype == np.float32 and q.lengths.tolist() == [12, 12]  # augmented to query_maxlen
    _assert_sets_close(q, colbert_ir_reference(models["colbert-ir"], QUERIES, True, 12), 2e-5)
    d = enc.encode_documents(DOCS)
    assert d.vectors.dtype == np.float16
    _assert_sets_close(d, colbert_ir_reference(models["colbert-ir"], DOCS, False, 40), 2e-3)


def test_pylate_checkpoint(models):
    enc = MultiVectorEncoder(models["pylate"], device="cpu")
    assert (enc.mode, enc.checkpoint, enc.dim) == ("colbert", "pylate", 16)
    assert enc._query_marker is not None and enc._doc_marker is not None
    _assert_sets_close(enc.encode_queries(QUERIES), pylate_reference(models["pylate"], QUERIES, True, 12), 2e-5)
    _assert_sets_close(enc.encode_documents(DOCS), pylate_reference(models["pylate"], DOCS, False, 40), 2e-3)


def test_stand_in_token_vectors(models):
    from transformers import AutoModel, AutoTokenizer

    enc = MultiVectorEncoder(models["bert"], device="cpu", doc_max_length=20)
    assert (enc.mode, enc.query_augmentation, enc.skip_punctuation) == ("tokens", False, False)
    tok = AutoTokenizer.from_pretrained(str(models["bert"]))
    net = AutoModel.from_pretrained(str(models["bert"])).eval()
    d = enc.encode_documents(DOCS)
    for i, text in enumerate(DOCS):
        e = tok(text, truncation=True, max_length=20, return_tensors="pt")
        with torch.no_grad():
            h = net(**e).last_hidden_state[0, 1:-1]  # drop [CLS] and [SEP]
        np.testing.assert_allclose(d[i].astype(np.float32), torch.nn.functional.normalize(h, dim=-1).numpy(),
                                   atol=2e-3)
    assert d.lengths[2] == 0  # empty text: no vectors
    with pytest.raises(ValueError, match="projection"):
        MultiVectorEncoder(models["bert"], mode="colbert")


def test_one_pass_dense_and_tokens_equal_separate(models, tmp_path):
    dense = DenseEncoder(models["st"], device="cpu", cache_dir=tmp_path)
    multi = MultiVectorEncoder(models["st"], device="cpu", doc_max_length=40, cache_dir=tmp_path)
    pooled, tokens = encode_dense_and_tokens(dense, multi, DOCS)
    # the caches now answer the separate calls; compare against uncached encoders
    np.testing.assert_allclose(pooled, DenseEncoder(models["st"], device="cpu").encode_documents(DOCS), atol=2e-5)
    sep = MultiVectorEncoder(models["st"], device="cpu", doc_max_length=40).encode_documents(DOCS)
    np.testing.assert_array_equal(tokens.offsets, sep.offsets)
    np.testing.assert_allclose(tokens.vectors.astype(np.float32), sep.vectors.astype(np.float32), atol=2e-3)
    np.testing.assert_array_equal(dense.encode_documents(DOCS), pooled)  # cache hit
    with pytest.raises(ValueError, match="length"):
        encode_dense_and_tokens(dense, MultiVectorEncoder(models["st"], device="cpu", doc_max_length=8), DOCS)


def test_save_load_config(models, tmp_path):
    enc = MultiVectorEncoder(models["colbert-ir"], device="cpu", query_max_length=8)
    enc.save(tmp_path)
    assert MultiVectorEncoder.load(tmp_path, device="cpu").config() == enc.config()


@pytest.mark.gpu
def test_cuda_close_to_cpu(models):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = MultiVectorEncoder(models["colbert-ir"], device="cpu").encode_documents(DOCS)
    gpu = MultiVectorEncoder(models["colbert-ir"], device="cuda").encode_documents(DOCS)
    np.testing.assert_array_equal(cpu.offsets, gpu.offsets)
    np.testing.assert_allclose(cpu.vectors.astype(np.float32), gpu.vectors.astype(np.float32), atol=3e-2)
