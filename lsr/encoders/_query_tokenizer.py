"""Fast query tokenisation for inference-free retrieval (no model, no torch).

For BERT-style tokenizers (``BertNormalizer`` with lowercasing, ``BertPreTokenizer``,
``WordPiece``), an ASCII query is normalised and split into words in Python, and each word's
WordPiece ids come from a cache filled by the tokenizer itself, so the ids are exactly the
tokenizer's. Anything else (non-ASCII text, other tokenizer families) goes through the
tokenizer unchanged.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

__all__ = ["QueryTokenizer"]

# BertNormalizer(clean_text) drops control characters other than \t \n \r (those become spaces)
_DROP_CONTROL = {c: None for c in list(range(0, 9)) + [11, 12] + list(range(14, 32)) + [127]}
# BertPreTokenizer: split on whitespace, and every ASCII punctuation/symbol is its own word
_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
_CACHE_LIMIT = 1 << 20


class QueryTokenizer:
    """``tokenizers.Tokenizer`` wrapper returning token ids (specials excluded), truncated as
    ``encode(text, add_special_tokens=True)`` with ``max_length`` would truncate them."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.n_special = tokenizer.post_processor.num_special_tokens_to_add(False) if tokenizer.post_processor else 0
        self.fast = self._is_bert_wordpiece(tokenizer)
        self._cache: dict[str, list[int]] = {}
        if self.fast:  # a private copy for single words: no truncation or padding settings shared
            from tokenizers import Tokenizer

            self._words = Tokenizer.from_str(tokenizer.to_str())
            self._words.no_truncation()
            self._words.no_padding()

    @staticmethod
    def _is_bert_wordpiece(tokenizer: Any) -> bool:
        try:
            cfg = json.loads(tokenizer.to_str())
        except Exception:  # a tokenizer that cannot serialise itself: use the slow path
            return False
        norm, pre, model = cfg.get("normalizer") or {}, cfg.get("pre_tokenizer") or {}, cfg.get("model") or {}
        return (norm.get("type") == "BertNormalizer" and norm.get("lowercase") is True
                and norm.get("clean_text", True) and pre.get("type") == "BertPreTokenizer"
                and model.get("type") == "WordPiece" and not cfg.get("added_tokens_decoder_only", False)
                and not any(not t.get("special", False) for t in cfg.get("added_tokens") or []))

    def _slow(self, text: str) -> list[int]:
        tok = self.tokenizer
        trunc = tok.truncation
        if trunc is None or trunc.get("max_length") != self.max_length:
            tok.enable_truncation(max_length=self.max_length)
        enc = tok.encode(text, add_special_tokens=True)
        return [i for i, special in zip(enc.ids, enc.special_tokens_mask) if not special]

    def __call__(self, text: str) -> list[int]:
        if not (self.fast and text.isascii()):
            return self._slow(text)
        budget = max(self.max_length - self.n_special, 0)
        out: list[int] = []
        cache = self._cache
        for word in _WORDS.findall(text.translate(_DROP_CONTROL).lower()):
            ids = cache.get(word)
            if ids is None:
                ids = self._words.encode(word, add_special_tokens=False).ids
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)
            if len(out) >= budget:
                return out[:budget]
        return out

    def batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self(str(t)) for t in texts]
