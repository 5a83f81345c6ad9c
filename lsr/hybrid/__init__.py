"""Retrievers and the hybrid layer (normalisation, fusion, PRF)."""
from lsr.hybrid.base import RETRIEVERS, Retriever, SearchResults, load_retriever, retriever_class

__all__ = ["RETRIEVERS", "Retriever", "SearchResults", "load_retriever", "retriever_class"]
