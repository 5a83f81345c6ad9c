"""Indexes: the Numba inverted index (sparse), FAISS dense and FDE indexes, on-disk format."""
from lsr.index._format import IndexFormatError
from lsr.index.inverted import InvertedIndex

__all__ = ["InvertedIndex", "IndexFormatError"]
