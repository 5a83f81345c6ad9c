"""Pseudo-queries from a corpus: training queries for corpus adaptation, with no queries or labels.

``n`` documents are drawn without replacement (seeded); each gives one pseudo-query, of one of
three kinds chosen at random among those the document can give:

* ``title``: its title, when it has at least ``MIN_WORDS`` words;
* ``sentence``: one of its sentences with ``MIN_WORDS`` to ``MAX_SENTENCE_WORDS`` words (split at
  ``.``, ``?``, ``!`` followed by a space), cut to its first ``MAX_SENTENCE_WORDS`` words;
* ``span``: ``SPAN_WORDS[0]`` to ``SPAN_WORDS[1]`` consecutive words from a random position of its
  text (a keyword-style query).

The same corpus, ``n`` and seed give the same queries. The document a query came from is its
source (returned with it); :func:`lsr.train.data.build_pseudo` keeps it among the candidates.

>>> qs = pseudo_queries(["d1"], ["A study of protein folding"], ["Proteins fold fast. Water helps."], 1, seed=0)
>>> len(qs), qs[0].source, qs[0].kind in ("title", "sentence", "span")
(1, 0, True)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PseudoQuery", "pseudo_queries", "KINDS", "MIN_WORDS", "MAX_SENTENCE_WORDS", "SPAN_WORDS"]

KINDS = ("title", "sentence", "span")
MIN_WORDS = 3
MAX_SENTENCE_WORDS = 24
SPAN_WORDS = (4, 10)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


@dataclass(frozen=True)
class PseudoQuery:
    text: str
    source: int        # position of the document it was made from
    kind: str          # one of KINDS


def _choices(title: str, text: str) -> dict[str, list[str]]:
    """What each kind can make from one document (an empty list: that kind is not possible)."""
    out: dict[str, list[str]] = {"title": [], "sentence": [], "span": []}
    if len(title.split()) >= MIN_WORDS:
        out["title"] = [" ".join(title.split())]
    for s in _SENTENCE_END.split(text.strip()):
        words = s.split()
        if len(words) >= MIN_WORDS:
            out["sentence"].append(" ".join(words[:MAX_SENTENCE_WORDS]))
    if len(text.split()) >= SPAN_WORDS[0]:
        out["span"] = [text]
    return out


def pseudo_queries(doc_ids: Sequence[str], titles: Sequence[str], texts: Sequence[str], n: int,
                   seed: int = 13, kinds: Sequence[str] = KINDS) -> list[PseudoQuery]:
    """``n`` pseudo-queries (fewer when fewer documents can give one), in document-draw order."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"pseudo-query kinds must be among {', '.join(KINDS)}, got {list(kinds)}")
    if n < 1:
        raise ValueError(f"the number of pseudo-queries must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    out: list[PseudoQuery] = []
    for d in rng.permutation(len(doc_ids)):
        if len(out) >= n:
            break
        options = _choices(titles[d] or "", texts[d] or "")
        possible = [k for k in kinds if options[k]]
        if not possible:
            continue
        kind = possible[int(rng.integers(len(possible)))]
        if kind == "span":
            words = options["span"][0].split()
            length = int(rng.integers(SPAN_WORDS[0], SPAN_WORDS[1] + 1))
            start = int(rng.integers(0, max(1, len(words) - length + 1)))
            text = " ".join(words[start:start + length])
        else:
            pool = options[kind]
            text = pool[int(rng.integers(len(pool)))]
        out.append(PseudoQuery(text, int(d), kind))
    return out
