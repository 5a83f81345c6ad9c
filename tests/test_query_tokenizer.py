"""The fast inference-free query tokenizer gives exactly the tokenizer's own ids."""
from __future__ import annotations

import numpy as np
import pytest

from lsr.encoders._query_tokenizer import QueryTokenizer

from conftest import beir_dataset, shared_model


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(shared_model("splade-tiny") / "tokenizer.json"))


def reference(tok, text, max_length):
    tok.enable_truncation(max_length=max_length)
    enc = tok.encode(text, add_special_tokens=True)
    return [i for i, s in zip(enc.ids, enc.special_tokens_mask) if not s]


def random_texts(n, seed=0):
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 + \
        list(" \t\n\r!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["\x00", "\x07", "\x1b", "\x7f", "\x0b"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 80))) for _ in range(n)]
    texts += ["x" * 150 + " short", "antidisestablishmentarianism" * 5, "", "   ", "Hello\x01World", "don't U.S.A."]
    texts += ["naïve café 東京 Ωmega", "émigré\u00a0test", "mixed ascii ünïcode"]  # non-ASCII: slow path
    return texts


@pytest.mark.parametrize("max_length", [8, 64, 512])
def test_random_and_edge_texts(tokenizer, max_length):
    qt = QueryTokenizer(tokenizer, max_length)
    assert qt.fast
    for text in random_texts(400):
        assert qt(text) == reference(tokenizer, text, max_length), repr(text)


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_all_beir_queries(tokenizer, name):
    from lsr import read_queries

    qt = QueryTokenizer(tokenizer, 64)
    for text in read_queries(beir_dataset(name) / "queries.jsonl").values():
        assert qt(text) == reference(tokenizer, text, 64), repr(text)
