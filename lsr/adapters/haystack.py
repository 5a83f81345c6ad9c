"""Haystack retriever component over an lsr collection (``pip install 'lsr[haystack]'``).

``LsrRetriever`` is a Haystack ``@component`` with ``run(query, top_k=None, filters=None) ->
{"documents": list[Document]}``. haystack-ai is imported when this module is (``import lsr`` does
not import it); without it, using ``LsrRetriever`` raises ImportError with the install hint.

>>> from haystack import Pipeline                                 # doctest: +SKIP
>>> from lsr.adapters.haystack import LsrRetriever                 # doctest: +SKIP
>>> pipe = Pipeline()                                              # doctest: +SKIP
>>> pipe.add_component("retriever", LsrRetriever("my_collection", top_k=4))  # doctest: +SKIP
>>> pipe.run({"retriever": {"query": "heart disease",
...           "filters": {"field": "meta.tenant", "operator": "==", "value": "a"}}})  # doctest: +SKIP

Each hit becomes ``Document(id=_id, content=text, meta={...metadata, "title" when the document
has one}, score=score)``. ``filters`` use Haystack 2.x syntax (translated by
:func:`to_lsr_filter`); as in Haystack's own retrievers, ``filter_policy`` REPLACE (default) lets a
run's filters replace the component's, MERGE combines them. ``to_dict``/``from_dict`` store the
collection's path, so pipelines serialise (``Pipeline.dumps`` / ``Pipeline.loads``).
"""
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from lsr.adapters._common import (check_k, collection_path, hit_metadata, open_collection, require,
                                  search_hits)
from lsr.errors import FilterError

__all__ = ["LsrRetriever", "to_lsr_filter"]

_COMPARISONS = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte",
                "in": "$in", "not in": "$nin"}
_DOCUMENT_FIELDS = ("content", "score", "embedding", "sparse_embedding", "blob")


def _field(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise FilterError(f"Haystack filter: 'field' must be a non-empty string, got {name!r}")
    if name == "id":
        return "_id"
    if name.startswith("meta."):
        key = name[len("meta."):]
        if "." in key:
            raise FilterError(f"Haystack filter field {name!r}: nested metadata is not filterable in lsr "
                              f"(top-level keys only)")
        return key
    if name in _DOCUMENT_FIELDS:
        raise FilterError(f"Haystack filter field {name!r}: lsr filters on id and meta.<key> only")
    return name  # a bare key is a metadata key, as Haystack reads converted legacy filters


def _operand(value: Any) -> Any:
    if isinstance(value, (datetime, date)):  # lsr compares ISO 8601 text (docs/collections.md)
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_operand(v) for v in value]
    return value


def to_lsr_filter(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A Haystack 2.x filter as an lsr filter dict (None stays None).

    Comparisons ``{"field": "meta.<key>" | "id", "operator": "==" | "!=" | ">" | ">=" | "<" | "<="
    | "in" | "not in", "value": ...}``; logic ``{"operator": "AND" | "OR" | "NOT", "conditions":
    [...]}`` (NOT: not all of the conditions, as Haystack reads it). ``datetime``/``date`` values
    become ISO 8601 strings (lsr compares dates as text). Missing keys follow lsr's rules, which
    agree with Haystack's in-memory filter: ``!=``/``not in`` match documents without the key,
    ordered comparisons do not. Anything else raises :class:`lsr.errors.FilterError`.
    """
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise FilterError(f"Haystack filters must be a dict, got {type(filters).__name__}")
    if not filters:
        return {}
    operator = filters.get("operator")
    if "field" in filters:
        if operator not in _COMPARISONS:
            raise FilterError(f"Haystack filter on {filters['field']!r}: unknown comparison operator "
                              f"{operator!r} (supported: {', '.join(_COMPARISONS)})")
        if "value" not in filters:
            raise FilterError(f"Haystack filter on {filters['field']!r}: 'value' key missing")
        value = _operand(filters["value"])
        if operator in ("in", "not in") and not isinstance(value, list):
            raise FilterError(f"Haystack filter on {filters['field']!r}: {operator!r} needs a list, "
                              f"got {value!r}")
        return {_field(filters["field"]): {_COMPARISONS[operator]: value}}
    if "conditions" not in filters:
        raise FilterError(f"Haystack filter: expected a comparison {{'field', 'operator', 'value'}} or a logic "
                          f"{{'operator', 'conditions'}} dict, got keys {sorted(map(str, filters))}")
    if operator not in ("AND", "OR", "NOT"):
        raise FilterError(f"Haystack filter: unknown logical operator {operator!r} (AND, OR, NOT)")
    conditions = filters.get("conditions")
    if not isinstance(conditions, (list, tuple)):
        raise FilterError(f"Haystack filter: {operator} needs a list of 'conditions'")
    children = [to_lsr_filter(c) for c in conditions]
    if not children:  # Haystack: AND of nothing holds, OR of nothing does not, NOT = not AND
        return {"_id": {"$in": []}} if operator in ("OR", "NOT") else {}
    combined = children[0] if len(children) == 1 else {"$or" if operator == "OR" else "$and": children}
    return {"$not": combined} if operator == "NOT" else combined


def _build() -> type:
    require("haystack", "haystack", "haystack-ai")
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.document_stores.types import FilterPolicy, apply_filter_policy

    @component
    class LsrRetriever:
        """Haystack retriever over an lsr collection.

        Args:
            collection: an open ``lsr`` Collection, or its path (opened read-only; a read-only
                collection is refreshed before each query, so it searches the newest commit).
            top_k: results per query (a run's ``top_k`` replaces it; 0 returns nothing).
            filters: a Haystack 2.x filter applied to every run (see ``filter_policy``).
            filter_policy: REPLACE (a run's filters replace ``filters``) or MERGE (both apply).
        """

        def __init__(self, collection: Any, top_k: int = 10, filters: dict[str, Any] | None = None,
                     filter_policy: FilterPolicy | str = FilterPolicy.REPLACE) -> None:
            self.collection = open_collection(collection)
            self.top_k = check_k(top_k, "top_k")
            to_lsr_filter(filters)  # a bad filter fails here, not at the first run
            self.filters = filters
            self.filter_policy = (FilterPolicy.from_str(filter_policy) if isinstance(filter_policy, str)
                                  else filter_policy)

        def to_dict(self) -> dict[str, Any]:
            return default_to_dict(self, collection=collection_path(self.collection), top_k=self.top_k,
                                   filters=self.filters, filter_policy=self.filter_policy.value)

        @classmethod
        def from_dict(cls, data: dict[str, Any]) -> "LsrRetriever":
            return default_from_dict(cls, data)

        @component.output_types(documents=list[Document])
        def run(self, query: str, top_k: int | None = None,
                filters: dict[str, Any] | None = None) -> dict[str, list[Document]]:
            k = self.top_k if top_k is None else check_k(top_k, "top_k", allow_zero=True)
            merged = apply_filter_policy(self.filter_policy, self.filters, filters)
            hits = search_hits(self.collection, query, k, to_lsr_filter(merged))
            return {"documents": [Document(id=str(hit["_id"]), content=hit["text"], meta=hit_metadata(hit),
                                           score=float(hit["score"])) for hit in hits]}

    LsrRetriever.__module__ = __name__
    return LsrRetriever


def __getattr__(name: str) -> Any:
    if name != "LsrRetriever":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _build()  # haystack is missing (else the class exists): raises ImportError with the hint


# Built when this module is imported (not only at first use, as the other adapters do): a pipeline
# loaded from YAML in a fresh process imports this module and then looks the class up in
# Haystack's component registry, which @component fills when the class is made.
try:
    LsrRetriever = _build()
except ImportError:
    pass
