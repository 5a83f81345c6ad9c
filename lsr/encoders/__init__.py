"""Encoders: text to sparse, dense or multi-vector representations."""
from lsr.encoders.analysis import EnglishAnalyzer
from lsr.encoders.bm25 import BM25Encoder

__all__ = ["EnglishAnalyzer", "BM25Encoder"]
