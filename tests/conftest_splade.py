"""Shared helpers for the learned-sparse tests: a tiny generated BERT masked-LM and a tiny BEIR set.

Import the fixtures into a test module (``from conftest_splade import tiny_mlm, ...``). Models are
built once per session with a fixed seed; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPLADE_TINY = Path(__file__).resolve().parents[2] / "shared" / "models" / "splade-tiny"
if not SPLADE_TINY.is_dir():
    SPLADE_TINY = Path("/work/shared/models/splade-tiny")

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("heart disease blood pressure cause causes high cholesterol smoking stock market fell sharply "
         "on tuesday the a of and is by what risk cancer cell protein gene study patients treatment "
         "effect vitamin sleep brain memory diet sugar insulin").split()
PIECES = ["##s", "##ing", "##ed", "##er", "##ly", "un", "re", "in", "##al", "##ion"]

CORPUS = {
    "d1": ("Heart disease", "Heart disease is caused by high blood pressure, high cholesterol and smoking."),
    "d2": ("Markets", "The stock market fell sharply on Tuesday."),
    "d3": ("Cancer genes", "A study of cancer cell protein and gene treatment in patients."),
    "d4": ("", "Vitamin and diet effect on sleep, brain and memory."),
    "d5": ("Insulin", "Sugar, insulin and the risk of heart disease in patients with high blood pressure."),
    "d6": ("", "Smoking causes cancer; risk of heart disease is high."),
}
QUERIES = {"q1": "what causes heart disease", "q2": "stock market", "q3": "cancer gene study",
           "q4": "sleep and memory"}
QRELS = {"q1": {"d1": 2, "d5": 1, "d6": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}


def build_tiny_mlm(directory: Path, seed: int = 0, with_idf: bool = True) -> Path:
    """A 2-layer BERT masked-LM (hidden 32) with a WordPiece tokenizer and, optionally, idf.json."""
    import torch
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS + PIECES + list(",.;?'")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    wordpiece = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)
    tok.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    with torch.no_grad():  # larger weights than the init so that logits spread around 0
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(20.0)
        model.cls.predictions.decoder.bias.normal_(-1.0, 1.0)
    model.save_pretrained(directory)
    if with_idf:
        rng = np.random.default_rng(seed)
        idf = {t: round(float(rng.uniform(0.1, 6.0)), 4) for t in vocab}
        idf["not-a-token"] = 1.0  # opensearch tables can hold tokens a tokenizer lacks
        (directory / "idf.json").write_text(json.dumps(idf))
    return directory


def write_tiny_beir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as f:
        for i, (title, text) in CORPUS.items():
            f.write(json.dumps({"_id": i, "title": title, "text": text}) + "\n")
    with open(directory / "queries.jsonl", "w") as f:
        for q, text in QUERIES.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    with open(directory / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, rels in QRELS.items():
            for d, r in rels.items():
                f.write(f"{q}\t{d}\t{r}\n")
    return directory


def reference_splade(model_dir: str | Path, texts: list[str], max_length: int) -> np.ndarray:
    """Independent plain-transformers SPLADE: max over masked tokens of log1p(relu(logits)), specials zeroed."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**enc).logits
        w = (torch.log1p(torch.relu(logits)) * enc["attention_mask"].unsqueeze(-1)).amax(dim=1)
        w[:, tok.all_special_ids] = 0
    return w.numpy()


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory) -> Path:
    """Directory of a tiny BERT masked-LM with tokenizer files and idf.json side by side."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_mlm(tmp_path_factory.mktemp("tiny_mlm"))


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return write_tiny_beir(tmp_path_factory.mktemp("tiny_beir"))


TEXTS = [f"{t} {x}".strip() for t, x in CORPUS.values()] + [
    "heart " * 80,  # longer than the document limit: truncated
    "",
    "unknownword xyz heart",
]
