"""Shared helpers for the dense / multi-vector / MUVERA tests (no downloads).

Tiny generated models: each builder writes a randomly initialised 2-layer BERT (hidden 32) with
the shared bert-base-uncased WordPiece vocabulary into a directory, plus the extra files of the
format under test: sentence-transformers modules, a colbert-ir ``linear.weight`` or a PyLate
Dense. ``st_model`` is such a bi-encoder as a fixture (import it into the test module).

Also here, because several test modules use them: random point sets and the expected ranking
(``random_sets``, ``ranked``), a subprocess runner for checks that could crash the process if a
guard regressed (FAISS aborts, Numba kernels reading bad offsets), and edits of saved index
directories (``edit_manifest``, ``rehash``, ``faiss_of``) for the damaged-directory tests.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB_SOURCE = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
HIDDEN = 32


def build_bert(directory: Path, seed: int = 0) -> Path:
    """Tiny random BERT + the shared bert-base-uncased tokenizer, saved into ``directory``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if not (VOCAB_SOURCE / "tokenizer.json").is_file():
        pytest.skip(f"needs the shared bert-base-uncased tokenizer at {VOCAB_SOURCE}")
    directory.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(VOCAB_SOURCE))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_sentence_transformer(directory: Path, pooling: str = "mean", normalize: bool = True,
                               prompts: dict | None = None, max_seq_length: int = 64) -> Path:
    """Tiny bi-encoder directory in the sentence-transformers layout."""
    build_bert(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_lasttoken": pooling == "lasttoken"}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    if prompts:
        (directory / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return directory


@pytest.fixture(scope="module")
def st_model(tmp_path_factory) -> Path:
    """A tiny sentence-transformers bi-encoder (mean pooling, normalised, 48 tokens)."""
    pytest.importorskip("torch")
    return build_sentence_transformer(tmp_path_factory.mktemp("st") / "st", max_seq_length=48)


def build_colbert_ir(directory: Path, dim: int = 16, query_maxlen: int = 12, doc_maxlen: int = 40) -> Path:
    """colbert-ir style checkpoint: ``bert.*`` weights plus ``linear.weight`` in one safetensors file."""
    import torch
    from safetensors.torch import load_file, save_file

    build_bert(directory)
    state = load_file(str(directory / "model.safetensors"))
    state = {("bert." + k if not k.startswith("bert.") else k): v for k, v in state.items()}
    torch.manual_seed(1)
    state["linear.weight"] = torch.randn(dim, HIDDEN) / HIDDEN ** 0.5
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    (directory / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": query_maxlen,
        "doc_maxlen": doc_maxlen, "mask_punctuation": True, "attend_to_mask_tokens": False, "dim": dim}))
    return directory


def build_pylate(directory: Path, dim: int = 16, query_length: int = 12, document_length: int = 40) -> Path:
    """PyLate style checkpoint: Transformer + ``1_Dense`` module, [Q]/[D] added tokens."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    build_bert(directory)
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.add_tokens(["[Q] ", "[D] "])
    tok.save_pretrained(directory)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory))
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(directory)
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (directory / "1_Dense").mkdir(exist_ok=True)
    (directory / "1_Dense" / "config.json").write_text(json.dumps({
        "in_features": HIDDEN, "out_features": dim, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    torch.manual_seed(2)
    save_file({"linear.weight": (torch.randn(dim, HIDDEN) / HIDDEN ** 0.5).contiguous()},
              str(directory / "1_Dense" / "model.safetensors"))
    (directory / "config_sentence_transformers.json").write_text(json.dumps({
        "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": query_length,
        "document_length": document_length, "do_query_expansion": True, "attend_to_expansion_tokens": False,
        "skiplist_words": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")}))
    return directory


# ---------------------------------------------------------------------------- synthetic data
def random_sets(rng, n, dim, max_len, dtype, min_len=0):
    """``n`` point sets of ``min_len``..``max_len`` Gaussian vectors each."""
    return [rng.normal(size=(int(rng.integers(min_len, max_len + 1)), dim)).astype(dtype) for _ in range(n)]


def ranked(scores_row, positions, k):
    """Distinct positions with a finite score, best first, ties by lower position, at most k."""
    pos = sorted({int(p) for p in positions if p >= 0 and np.isfinite(scores_row[p])},
                 key=lambda p: (-scores_row[p], p))
    return pos[:k]


# ---------------------------------------------------------------------------- crash-prone checks
def run_python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the repository root, so that a crash (a FAISS
    abort, a kernel reading bad offsets) fails one test instead of ending the test run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------------------- damaged directories
def rehash(root: Path, rel: str, manifest: str = "manifest.json") -> None:
    """Record the current size and SHA-256 of ``rel`` in the manifest, so only the content is wrong."""
    m = json.loads((root / manifest).read_text())
    f = (root / manifest).parent / rel
    m["files"][rel] = {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (root / manifest).write_text(json.dumps(m))
    _rehash_nested(root, manifest)


def edit_manifest(root: Path, fn, manifest: str = "manifest.json") -> None:
    """Apply ``fn`` to the parsed manifest and write it back (a nested manifest's new size and
    hash recorded in the top one, which lists it, so that only the edit itself is wrong)."""
    m = json.loads((root / manifest).read_text())
    fn(m)
    (root / manifest).write_text(json.dumps(m))
    _rehash_nested(root, manifest)


def _rehash_nested(root: Path, manifest: str) -> None:
    if manifest != "manifest.json" and manifest in json.loads((root / "manifest.json").read_text())["files"]:
        rehash(root, manifest)


def faiss_of(kind: str, dim: int, n: int):
    """A small FAISS index to swap into a saved directory: ``l2`` (flat L2), ``hnsw`` or else IVF."""
    import faiss

    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    if kind == "l2":
        index = faiss.IndexFlatL2(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, 2, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
    index.add(x)
    return index
