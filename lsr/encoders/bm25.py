"""BM25 as a sparse encoder: document-side impacts, query-side term counts.

Scores equal Lucene's ``BM25Similarity`` as Anserini runs it (k1=0.9, b=0.4, Lucene's idf
``log(1 + (N - df + 0.5) / (df + 0.5))``, document lengths quantised to Lucene's one-byte
norms), folded into the document vectors so BM25 search is plain inner-product search:

    score(q, d) = sum_t count(t, q) * idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))

>>> enc = BM25Encoder()
>>> docs = enc.fit_documents(["heart disease risk", "stock market news", "heart attack"])
>>> q = enc.encode_queries(["heart disease"])
>>> (q.to_scipy() @ docs.to_scipy().T).toarray().round(3)
array([[0.746, 0.   , 0.26 ]], dtype=float32)
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lsr.encoders.analysis import EnglishAnalyzer
from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["BM25Encoder", "lucene_norm_encode", "lucene_norm_decode"]


def _int4_to_long(i: np.ndarray) -> np.ndarray:
    bits = i & 0x07
    shift = (i >> 3) - 1
    return np.where(shift == -1, bits, (bits | 0x08) << np.maximum(shift, 0))


def _long_to_int4(i: np.ndarray) -> np.ndarray:
    i = i.astype(np.int64)
    nbits = np.frexp(i.astype(np.float64))[1].astype(np.int64)  # exact bit length below 2**53
    shift = nbits - 4
    normal = ((i >> np.maximum(shift, 0)) & 0x07) | ((shift + 1) << 3)
    return np.where(nbits < 4, i, normal)


_NUM_FREE_VALUES = 255 - int(_long_to_int4(np.array([2**31 - 1]))[0])  # 24, as in Lucene


def lucene_norm_encode(length: np.ndarray) -> np.ndarray:
    """``SmallFloat.intToByte4``: the one-byte norm Lucene stores for a field length."""
    length = np.asarray(length, dtype=np.int64)
    return np.where(
        length < _NUM_FREE_VALUES, length, _NUM_FREE_VALUES + _long_to_int4(np.maximum(length - _NUM_FREE_VALUES, 0))
    ).astype(np.int64)


def lucene_norm_decode(norm: np.ndarray) -> np.ndarray:
    """``SmallFloat.byte4ToInt``: the (lossy) field length Lucene scores with."""
    norm = np.asarray(norm, dtype=np.int64)
    return np.where(norm < _NUM_FREE_VALUES, norm, _NUM_FREE_VALUES + _int4_to_long(np.maximum(norm - _NUM_FREE_VALUES, 0)))


class BM25Encoder:
    """BM25 term weights as sparse vectors over a vocabulary learnt from the corpus.

    Call :meth:`fit_documents` once on the corpus (it learns vocabulary, document
    frequencies and average length, and returns the corpus' impact vectors); then
    :meth:`encode_queries` turns queries into term-count vectors over that vocabulary.
    """

    name = "bm25"

    def __init__(self, k1: float = 0.9, b: float = 0.4, analyzer: EnglishAnalyzer | None = None,
                 lucene_norms: bool = True) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.lucene_norms = float(k1), float(b), bool(lucene_norms)
        self.analyzer = analyzer or EnglishAnalyzer()
        self.vocab: list[str] = []
        self._term_ids: dict[str, int] = {}
        self.df = np.zeros(0, dtype=np.int64)
        self.n_docs = 0
        self.sum_lengths = 0

    # ------------------------------------------------------------------ fitting
    @property
    def fitted(self) -> bool:
        return self.n_docs > 0

    @property
    def avgdl(self) -> float:
        return self.sum_lengths / self.n_docs if self.n_docs else 0.0

    def idf(self) -> np.ndarray:
        df = self.df.astype(np.float64)
        return np.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5)).astype(np.float32).astype(np.float64)

    def _count(self, texts: Sequence[str], grow: bool, show_progress: bool) -> tuple[SparseBatch, np.ndarray]:
        """Analyze texts into term frequencies (rows with sorted, unique term ids; float32
        counts) and their analyzed lengths. numpy only: no scipy or tqdm import unless progress
        is shown, so encoding a query stays cheap in a fresh process."""
        ids = self._term_ids
        n = len(texts)
        indptr = np.zeros(n + 1, dtype=np.int64)
        cols: list[int] = []
        lengths = np.zeros(n, dtype=np.int64)
        rows: Sequence[str] = texts
        if show_progress:
            from tqdm.auto import tqdm

            rows = tqdm(texts, desc="analyze", unit="doc")
        for i, text in enumerate(rows):
            terms = self.analyzer(text)
            lengths[i] = len(terms)
            for t in terms:
                j = ids.get(t)
                if j is None:
                    if not grow:
                        continue
                    j = ids[t] = len(self.vocab)
                    self.vocab.append(t)
                cols.append(j)
            indptr[i + 1] = len(cols)
        v = len(self.vocab)
        counts = np.zeros(0, np.float32)
        if cols:  # merge repeated terms of a row: unique (row, term) keys, already in CSR order
            key, counts = np.unique(np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr)) * v
                                    + np.asarray(cols, dtype=np.int64), return_counts=True)
            indptr = np.concatenate(([0], np.cumsum(np.bincount(key // v, minlength=n)))).astype(np.int64)
            cols = key % v
        return SparseBatch(indptr, np.asarray(cols, np.int64), counts.astype(np.float32), v, self.vocab), lengths

    def fit_documents(self, texts: Sequence[str], show_progress: bool = False) -> SparseBatch:
        """Learn vocabulary and statistics from the corpus; return its BM25 impact vectors."""
        if not len(texts):
            raise ValueError("cannot fit BM25 on an empty corpus")
        self.vocab, self._term_ids = [], {}
        tf, lengths = self._count(texts, grow=True, show_progress=show_progress)
        self.df = np.bincount(tf.indices, minlength=len(self.vocab)).astype(np.int64)
        self.n_docs = int(np.count_nonzero(lengths))  # Lucene's docCount: docs with >= 1 term
        self.sum_lengths = int(lengths.sum())
        if not self.n_docs:
            raise ValueError("no document has any indexable term")
        return self._impacts(tf, lengths)

    def _impacts(self, tf: SparseBatch, lengths: np.ndarray) -> SparseBatch:
        dl = lucene_norm_decode(lucene_norm_encode(lengths)) if self.lucene_norms else lengths
        avgdl = np.float32(self.avgdl)
        # Lucene caches 1 / (k1 * (1 - b + b * dl / avgdl)) in float32 per norm value.
        with np.errstate(divide="ignore"):  # k1 = 0: inv_norm is inf and every weight is the idf (binary BM25)
            inv_norm = (1.0 / (self.k1 * ((1 - self.b) + self.b * dl.astype(np.float32) / avgdl))).astype(np.float32)
        row = np.repeat(np.arange(tf.indptr.size - 1), np.diff(tf.indptr))
        freq = tf.data.astype(np.float32)
        idf = self.idf().astype(np.float32)[tf.indices]
        w = idf - idf / (np.float32(1.0) + freq * inv_norm[row])
        vocab = self.vocab
        return SparseBatch(tf.indptr, tf.indices, w.astype(np.float32), len(vocab), vocab)

    # ------------------------------------------------------------------ encoding
    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> SparseBatch:
        """Impact vectors of further documents under the fitted statistics (unknown terms dropped)."""
        self._require_fit()
        tf, lengths = self._count(texts, grow=False, show_progress=show_progress)
        return self._impacts(tf, lengths)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> SparseBatch:
        """Query vectors: the count of each analyzed term (Anserini's bag-of-words boosts)."""
        self._require_fit()
        tf, _ = self._count(texts, grow=False, show_progress=show_progress)
        return tf

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError("BM25Encoder is not fitted: call fit_documents(corpus_texts) first")

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"type": self.name, "k1": self.k1, "b": self.b, "lucene_norms": self.lucene_norms,
                "analyzer": self.analyzer.config(), "n_docs": self.n_docs, "sum_lengths": self.sum_lengths,
                "vocab_size": len(self.vocab)}

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``encoder.json``, ``vocab.parquet`` (term, df) into an existing directory."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        directory = Path(directory)
        self._require_fit()
        pq.write_table(pa.table({"term": pa.array(self.vocab, pa.string()), "df": pa.array(self.df, pa.int64())}),
                       directory / "vocab.parquet")
        (directory / "encoder.json").write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BM25Encoder":
        from lsr.io.manifest import int64_column, read_parquet

        directory = Path(directory)
        cfg = json.loads((directory / "encoder.json").read_text())
        an = cfg.get("analyzer", {})
        stop = an.get("stopwords", "lucene-english")
        stemmer = an.get("stemmer", "porter")
        if stop == "lucene-english":
            analyzer = EnglishAnalyzer(stemmer=stemmer)
        else:
            analyzer = EnglishAnalyzer(stopwords=frozenset(stop), stemmer=stemmer)
        enc = cls(cfg["k1"], cfg["b"], analyzer, cfg.get("lucene_norms", True))
        table = read_parquet(directory / "vocab.parquet")
        enc.vocab = table.column("term").to_pylist()
        enc._term_ids = {t: i for i, t in enumerate(enc.vocab)}
        enc.df = int64_column(table, "df")
        enc.n_docs, enc.sum_lengths = int(cfg["n_docs"]), int(cfg["sum_lengths"])
        if len(enc.vocab) != cfg["vocab_size"] or len(set(enc.vocab)) != len(enc.vocab):
            raise ValueError(f"{directory}/vocab.parquet: vocabulary does not match encoder.json")
        return enc
