"""LangChain retriever over an lsr collection (``pip install 'lsr[langchain]'``).

``LsrRetriever`` is a ``langchain_core.retrievers.BaseRetriever``; langchain-core is imported the
first time the name is used, so ``import lsr.adapters.langchain`` works without it.

>>> from lsr.adapters.langchain import LsrRetriever              # doctest: +SKIP
>>> retriever = LsrRetriever(collection="my_collection", k=4, filter={"tenant": "a"})  # doctest: +SKIP
>>> retriever.invoke("heart disease")                             # doctest: +SKIP
>>> retriever.invoke("heart disease", k=2, filter={"tenant": "b"})  # per call  # doctest: +SKIP

Each hit becomes ``Document(page_content=text, metadata={...document metadata, "title" (when the
document has one), "_id", "score"}, id=_id)``; those three keys override metadata keys of the same
name. ``k`` and ``filter`` given to ``invoke`` (keyword arguments) replace the retriever's own for
that call, as ``search_kwargs`` do for LangChain's vector-store retrievers. The filter is lsr's
(MongoDB-like: ``{"tenant": "a", "year": {"$gte": 2020}}``; see docs/collections.md).
"""
from typing import Any

from lsr.adapters._common import check_k, hit_metadata, open_collection, require, search_hits

__all__ = ["LsrRetriever"]

_CLASS: Any = None


def _build() -> type:
    require("langchain_core", "langchain", "langchain-core")
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, field_validator

    class LsrRetriever(BaseRetriever):
        """LangChain retriever over an lsr collection.

        Attributes:
            collection: an open ``lsr`` Collection, or its path (opened read-only; a read-only
                collection is refreshed before each query, so it searches the newest commit).
            k: results per query.
            filter: an lsr metadata filter (dict, or a list of document ids), or None for all.
        """

        model_config = ConfigDict(arbitrary_types_allowed=True)

        collection: Any
        k: int = 4
        filter: Any = None

        @field_validator("collection", mode="before")
        @classmethod
        def _open(cls, value: Any) -> Any:
            return open_collection(value)

        @field_validator("k")
        @classmethod
        def _positive(cls, value: int) -> int:
            return check_k(value)

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                    k: int | None = None, filter: Any = None) -> list[Document]:
            k = self.k if k is None else check_k(k)
            hits = search_hits(self.collection, query, k, self.filter if filter is None else filter)
            return [Document(page_content=hit["text"], id=str(hit["_id"]),
                             metadata={**hit_metadata(hit), "_id": hit["_id"], "score": float(hit["score"])})
                    for hit in hits]

    LsrRetriever.__module__ = __name__
    return LsrRetriever


def __getattr__(name: str) -> Any:
    global _CLASS
    if name != "LsrRetriever":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _CLASS is None:
        _CLASS = _build()
    return _CLASS
