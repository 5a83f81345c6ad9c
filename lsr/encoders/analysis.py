"""A text analyzer close to Lucene's English analyzer as Anserini configures it.

Pipeline: Unicode word segmentation approximating Lucene's ``StandardTokenizer`` (UAX#29:
letters and digits join; ``.``/``'`` join letters, ``.``/``,``/``;`` join digits; hyphens and
other punctuation split; pictographic symbols such as (c) are tokens of their own), the English
possessive filter (``'s``), lowercasing, Lucene's 33 English stop words, then Porter stemming
exactly as Lucene's ``PorterStemFilter`` does (``stemmer="porter"``, the default; see
:mod:`lsr.encoders._porter`) or any Snowball stemmer of PyStemmer (``stemmer="snowball:english"``).

>>> EnglishAnalyzer()("The U.S. economy's 3.5% growth, and COVID-19 vaccines!")
['u.', 'economi', '3.5', 'growth', 'covid', '19', 'vaccin']
"""
from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["EnglishAnalyzer", "LUCENE_ENGLISH_STOP_WORDS"]

# org.apache.lucene.analysis.en.EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
LUCENE_ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)

_LETTER = r"[^\W\d_]"
# Extended_Pictographic characters that StandardTokenizer emits as tokens (emoji, (c), (r), TM, ...)
_PICTO = "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u23cf" \
         "\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u27bf" \
         "\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
# Python's \w includes "other numbers" (superscripts, subscripts, fractions) that UAX#29 does not join
_NO = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218b\u2460-\u24ff\u2776-\u2793"
_W = rf"[^\W{_NO}]"
_TOKEN = re.compile(
    rf"{_W}+(?:(?:(?<={_LETTER})[.'\u2019:\u00b7](?={_LETTER})|(?<=\d)[.,'\u2019;](?=\d)){_W}+)*|[{_PICTO}]"
)
_POSSESSIVE = ("'s", "\u2019s", "\uff07s")
MAX_TOKEN_LENGTH = 255  # StandardTokenizer's default; longer tokens are split


class EnglishAnalyzer:
    """Callable: text -> list of index terms. Stateless apart from a stemming cache."""

    def __init__(self, stopwords: frozenset[str] | None = LUCENE_ENGLISH_STOP_WORDS, stemmer: str | None = "porter"):
        self.stopwords = frozenset(stopwords or ())
        self.stemmer_name = stemmer
        if stemmer is None:
            self._stem = lambda w: w
        elif stemmer == "porter":
            from lsr.encoders._porter import porter_stem

            self._stem = lru_cache(maxsize=1 << 20)(porter_stem)
        elif stemmer.startswith("snowball:"):
            import Stemmer  # PyStemmer

            self._stem = lru_cache(maxsize=1 << 20)(Stemmer.Stemmer(stemmer.split(":", 1)[1]).stemWord)
        else:
            raise ValueError(f"unknown stemmer {stemmer!r}: use 'porter', 'snowball:<language>' or None")

    def config(self) -> dict:
        return {"tokenizer": "uax29-approx", "stopwords": "lucene-english" if self.stopwords == LUCENE_ENGLISH_STOP_WORDS
                else sorted(self.stopwords), "stemmer": self.stemmer_name}

    def tokenize(self, text: str) -> list[str]:
        """Tokens before stop-word removal and stemming (lowercased, possessives removed)."""
        out = []
        for tok in _TOKEN.findall(text):
            if tok[-2:].lower() in _POSSESSIVE:
                tok = tok[:-2]
            while len(tok) > MAX_TOKEN_LENGTH:
                out.append(tok[:MAX_TOKEN_LENGTH].lower())
                tok = tok[MAX_TOKEN_LENGTH:]
            if tok:
                out.append(tok.lower())
        return out

    def __call__(self, text: str) -> list[str]:
        stop, stem = self.stopwords, self._stem
        return [stem(t) for t in self.tokenize(text) if t not in stop]
