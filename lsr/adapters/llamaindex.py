"""LlamaIndex retriever over an lsr collection (``pip install 'lsr[llamaindex]'``).

``LsrRetriever`` is a ``llama_index.core.retrievers.BaseRetriever`` returning
``NodeWithScore(node=TextNode(id_=_id, text=text, metadata=...), score=score)``; llama-index-core
is imported the first time the name is used.

>>> from lsr.adapters.llamaindex import LsrRetriever             # doctest: +SKIP
>>> from llama_index.core.vector_stores import MetadataFilters, MetadataFilter  # doctest: +SKIP
>>> retriever = LsrRetriever("my_collection", similarity_top_k=4,
...                          filters=MetadataFilters(filters=[MetadataFilter(key="tenant", value="a")]))  # doctest: +SKIP
>>> retriever.retrieve("heart disease")                           # doctest: +SKIP

``filters`` is llama-index ``MetadataFilters`` (translated by :func:`to_lsr_filter`) or an lsr filter
dict (or a list of document ids) used as it is. A node's metadata is the document's metadata plus
its title under ``"title"`` when it has one.
"""
from collections.abc import Mapping
from typing import Any

from lsr.adapters._common import check_k, hit_metadata, open_collection, require, search_hits
from lsr.errors import FilterError

__all__ = ["LsrRetriever", "to_lsr_filter"]

_CLASS: Any = None

# FilterOperator values (llama_index.core.vector_stores.types) -> lsr operators
_OPERATORS = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte",
              "in": "$in", "nin": "$nin"}


def _value(enum_or_str: Any) -> Any:
    return getattr(enum_or_str, "value", enum_or_str)


def to_lsr_filter(filters: Any) -> Any:
    """llama-index ``MetadataFilters`` (or one ``MetadataFilter`` / ``ExactMatchFilter``) as an lsr
    filter dict; an lsr filter (dict, list of ids) or None passes through unchanged.

    Operators ``==`` (EQ, ExactMatchFilter), ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``in``, ``nin``;
    conditions ``and``, ``or`` and ``not`` (none of the filters matches, as llama-index's own
    in-memory filter reads it), nested to any depth. Other operators (``any``, ``all``,
    ``contains``, ``text_match``, ``is_empty``, ...) raise :class:`lsr.errors.FilterError`.
    Missing keys follow lsr's rules (docs/collections.md): ``!=`` and ``nin`` match documents
    without the key, ordered comparisons do not.
    """
    if filters is None or isinstance(filters, (Mapping, list, tuple)):
        return filters
    if hasattr(filters, "filters"):  # MetadataFilters
        children = [to_lsr_filter(child) for child in filters.filters]
        condition = _value(filters.condition) or "and"
        if condition not in ("and", "or", "not"):
            raise FilterError(f"llama-index filter condition {condition!r} is not supported (and, or, not)")
        if not children:  # no filters match everything, whatever the condition (as llama-index reads it)
            return {}
        if condition == "not":
            return {"$not": {"$or": children}}
        return children[0] if len(children) == 1 else {f"${condition}": children}
    if hasattr(filters, "key") and hasattr(filters, "value"):  # MetadataFilter
        op = _value(getattr(filters, "operator", "=="))
        if op not in _OPERATORS:
            raise FilterError(f"llama-index filter on {filters.key!r}: operator {op!r} is not supported "
                              f"by lsr (supported: {', '.join(_OPERATORS)})")
        value = filters.value
        if op in ("in", "nin") and not isinstance(value, (list, tuple)):
            raise FilterError(f"llama-index filter on {filters.key!r}: {op} needs a list, got {value!r}")
        return {filters.key: {_OPERATORS[op]: list(value) if op in ("in", "nin") else value}}
    raise FilterError(f"filters must be llama-index MetadataFilters or an lsr filter dict, "
                      f"got {type(filters).__name__}")


def _build() -> type:
    require("llama_index.core", "llamaindex", "llama-index-core")
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class LsrRetriever(BaseRetriever):
        """LlamaIndex retriever over an lsr collection.

        Args:
            collection: an open ``lsr`` Collection, or its path (opened read-only; a read-only
                collection is refreshed before each query, so it searches the newest commit).
            similarity_top_k: results per query.
            filters: llama-index ``MetadataFilters`` or an lsr filter, or None for all documents.
        """

        def __init__(self, collection: Any, similarity_top_k: int = 4, filters: Any = None,
                     callback_manager: CallbackManager | None = None, verbose: bool = False) -> None:
            self.collection = open_collection(collection)
            self.similarity_top_k = check_k(similarity_top_k, "similarity_top_k")
            self.filters = filters
            super().__init__(callback_manager=callback_manager, verbose=verbose)

        @property
        def filters(self) -> Any:
            return self._filters

        @filters.setter
        def filters(self, value: Any) -> None:  # translated when set: a bad filter fails here
            self._lsr_filter = to_lsr_filter(value)
            self._filters = value

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            hits = search_hits(self.collection, query_bundle.query_str, self.similarity_top_k, self._lsr_filter)
            return [NodeWithScore(node=TextNode(id_=str(hit["_id"]), text=hit["text"], metadata=hit_metadata(hit)),
                                  score=float(hit["score"])) for hit in hits]

    LsrRetriever.__module__ = __name__
    return LsrRetriever


def __getattr__(name: str) -> Any:
    global _CLASS
    if name != "LsrRetriever":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _CLASS is None:
        _CLASS = _build()
    return _CLASS
