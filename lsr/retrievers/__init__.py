"""Retrievers pair an encoder with an index: text in, :class:`~lsr.types.SearchResults` out.

One module per family (``sparse``, ``bi_encoder``, ``late_interaction``, ``hybrid``, ``prf``);
``base`` holds the base class and the registry the CLI's ``--retriever`` reads.
"""
from lsr.retrievers.base import RETRIEVERS, Retriever, load_retriever, retriever_class
from lsr.types import SearchResults

__all__ = ["RETRIEVERS", "Retriever", "SearchResults", "load_retriever", "retriever_class"]
