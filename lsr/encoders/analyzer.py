"""A text analyzer close to Lucene's English analyzer as Anserini configures it.

Pipeline: Unicode word segmentation approximating Lucene's ``StandardTokenizer`` (UAX#29:
letters and digits join; ``.``/``'`` join letters, ``.``/``,``/``;`` join digits; hyphens and
other punctuation split), the English possessive filter (``'s``), lowercasing, Lucene's 33
English stop words, then Porter stemming (PyStemmer's ``porter`` algorithm).

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
_TOKEN = re.compile(
    rf"\w+(?:(?:(?<={_LETTER})[.'\u2019:\u00b7](?={_LETTER})|(?<=\d)[.,'\u2019;](?=\d))\w+)*"
)
_POSSESSIVE = ("'s", "\u2019s", "\uff07s")
MAX_TOKEN_LENGTH = 255  # StandardTokenizer's default; longer tokens are split


class EnglishAnalyzer:
    """Callable: text -> list of index terms. Stateless apart from a stemming cache."""

    def __init__(self, stopwords: frozenset[str] | None = LUCENE_ENGLISH_STOP_WORDS, stemmer: str | None = "porter"):
        self.stopwords = frozenset(stopwords or ())
        self.stemmer_name = stemmer
        if stemmer is not None:
            import Stemmer  # PyStemmer

            self._stemmer = Stemmer.Stemmer(stemmer)
            self._stem = lru_cache(maxsize=1 << 20)(self._stemmer.stemWord)
        else:
            self._stem = lambda w: w

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
