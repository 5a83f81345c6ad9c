"""One in-memory type for a batch of sparse vectors.

Every sparse encoder in lsr (BM25, SPLADE, inference-free) returns a :class:`SparseBatch`:
a CSR matrix with ``int64`` row pointers, ``int32`` term ids and ``float32`` weights, plus
the vocabulary the term ids refer to.

>>> import numpy as np
>>> b = SparseBatch.from_rows([([3, 1], [0.5, 2.0]), ([], [])], vocab=["a", "b", "c", "d"])
>>> len(b), b.nnz, b.row(0)
(2, 2, (array([1, 3], dtype=int32), array([2. , 0.5], dtype=float32)))
>>> b.decode(0)
[('b', 2.0), ('d', 0.5)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["SparseBatch", "MultiVectors", "SearchResults", "DocIds"]


@dataclass(frozen=True)
class SparseBatch:
    """A batch of sparse vectors in CSR form over a fixed vocabulary.

    Rows are vectors, columns are term ids in ``[0, vocab_size)``. Within a row the term ids
    are sorted and unique (constructors merge duplicates by summing them).

    Attributes:
        indptr: ``int64`` array of shape ``(n + 1,)``.
        indices: ``int32`` term ids, shape ``(nnz,)``.
        data: ``float32`` weights, shape ``(nnz,)``.
        vocab_size: number of columns.
        vocab: optional sequence of ``vocab_size`` token strings (for ``decode``).
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    vocab_size: int
    vocab: Sequence[str] | None = None

    def __post_init__(self) -> None:
        indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(self.indices, dtype=np.int32)
        data = np.ascontiguousarray(self.data, dtype=np.float32)
        if indptr.ndim != 1 or indptr.size == 0 or indptr[0] != 0:
            raise ValueError("indptr must be a 1-d array starting at 0")
        if indptr.size > 1 and (indptr[1:] < indptr[:-1]).any():
            raise ValueError("indptr must be non-decreasing")
        if indices.shape != data.shape or indices.ndim != 1 or indptr[-1] != indices.size:
            raise ValueError(
                f"inconsistent CSR arrays: indptr[-1]={int(indptr[-1])}, "
                f"len(indices)={indices.size}, len(data)={data.size}"
            )
        vocab_size = int(self.vocab_size)
        if indices.size:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= vocab_size:
                raise ValueError(f"term ids must lie in [0, {vocab_size}); got {lo}..{hi}")
            if not np.isfinite(data.sum(dtype=np.float64)) and not np.isfinite(data).all():
                raise ValueError("weights must be finite (found NaN or inf)")
        if self.vocab is not None and len(self.vocab) != vocab_size:
            raise ValueError(f"vocab has {len(self.vocab)} entries but vocab_size is {vocab_size}")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "vocab_size", vocab_size)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_scipy(cls, matrix, vocab: Sequence[str] | None = None) -> "SparseBatch":
        """Wrap a scipy sparse matrix (any format); duplicates are summed, ids sorted."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"expected a scipy sparse matrix, got {type(matrix).__name__}")
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        return cls(m.indptr, m.indices, m.data, m.shape[1], vocab)

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[Sequence[int], Sequence[float]]],
        vocab_size: int | None = None,
        vocab: Sequence[str] | None = None,
    ) -> "SparseBatch":
        """Build from ``(term_ids, weights)`` pairs, one per vector."""
        if vocab_size is None:
            if vocab is None:
                raise ValueError("give vocab_size or vocab")
            vocab_size = len(vocab)
        ids_list, w_list, lengths = [], [], []
        for ids, w in rows:
            ids = np.asarray(ids, dtype=np.int64).ravel()
            w = np.asarray(w, dtype=np.float32).ravel()
            if ids.shape != w.shape:
                raise ValueError(f"row {len(lengths)}: {ids.size} term ids but {w.size} weights")
            ids_list.append(ids)
            w_list.append(w)
            lengths.append(ids.size)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.concatenate(ids_list) if ids_list else np.zeros(0, np.int64)
        data = np.concatenate(w_list) if w_list else np.zeros(0, np.float32)
        if indices.size and (indices.min() < 0 or indices.max() >= vocab_size):
            raise ValueError(f"term ids must lie in [0, {vocab_size})")
        import scipy.sparse as sp

        m = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), vocab_size))
        return cls.from_scipy(m, vocab)

    @classmethod
    def concat(cls, batches: Sequence["SparseBatch"]) -> "SparseBatch":
        """Stack batches over the same vocabulary."""
        if not batches:
            raise ValueError("nothing to concatenate")
        v = batches[0].vocab_size
        if any(b.vocab_size != v for b in batches):
            raise ValueError("batches have different vocabulary sizes")
        offsets = np.cumsum([0] + [b.nnz for b in batches[:-1]])
        indptr = np.concatenate([[0]] + [b.indptr[1:] + o for b, o in zip(batches, offsets)])
        return cls(
            indptr,
            np.concatenate([b.indices for b in batches]),
            np.concatenate([b.data for b in batches]),
            v,
            batches[0].vocab,
        )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.indptr.size - 1

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.vocab_size)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Term ids and weights of vector ``i`` (views, not copies)."""
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.data[a:b]

    def __getitem__(self, item: slice) -> "SparseBatch":
        if not isinstance(item, slice):
            raise TypeError("index a SparseBatch with a slice; use row(i) for one vector")
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise ValueError("only contiguous slices are supported")
        a, b = self.indptr[start], self.indptr[max(start, stop)]
        return SparseBatch(
            self.indptr[start : max(start, stop) + 1] - a,
            self.indices[a:b],
            self.data[a:b],
            self.vocab_size,
            self.vocab,
        )

    def to_scipy(self):
        """The batch as a ``scipy.sparse.csr_matrix`` (shares memory)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    def decode(self, i: int, top_k: int | None = None) -> list[tuple[str, float]]:
        """Vector ``i`` as readable ``(token, weight)`` pairs, heaviest first."""
        if self.vocab is None:
            raise ValueError("this batch carries no vocabulary to decode with")
        ids, w = self.row(i)
        order = np.argsort(-w, kind="stable")[:top_k]
        return [(self.vocab[int(ids[j])], round(float(w[j]), 4)) for j in order]


@dataclass
class MultiVectors:
    """Variable-length sets of vectors: flat ``vectors (total, dim)`` and ``offsets (n + 1,)``."""

    vectors: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (total_tokens, dim), got shape {self.vectors.shape}")
        if self.offsets.dtype != np.int64 or self.offsets.ndim != 1 or self.offsets.size < 1:
            raise ValueError("offsets must be a non-empty 1-D int64 array")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.vectors.shape[0]:
            raise ValueError(f"offsets must run from 0 to {self.vectors.shape[0]}, "
                             f"got {int(self.offsets[0])}..{int(self.offsets[-1])}")
        if self.offsets.size > 1 and np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")

    @classmethod
    def from_list(cls, items: Sequence[np.ndarray], dtype: np.dtype | type = np.float32,
                  dim: int | None = None) -> "MultiVectors":
        """Stack a list of ``(n_i, dim)`` arrays."""
        if not items:
            return cls(np.zeros((0, dim or 0), dtype=dtype), np.zeros(1, np.int64))
        dims = {np.asarray(x).shape[1] for x in items}
        if len(dims) != 1:
            raise ValueError(f"all items need the same dimension, got {sorted(dims)}")
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(x) for x in items], out=offsets[1:])
        return cls(np.concatenate([np.asarray(x, dtype=dtype) for x in items]), offsets)

    @classmethod
    def concat(cls, parts: Sequence["MultiVectors"]) -> "MultiVectors":
        if not parts:
            raise ValueError("nothing to concatenate")
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += p.vectors.shape[0]
        return cls(np.concatenate([p.vectors for p in parts]), np.concatenate(offsets))

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i]:self.offsets[i + 1]]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def astype(self, dtype: np.dtype | type) -> "MultiVectors":
        return MultiVectors(np.asarray(self.vectors, dtype=dtype), self.offsets)

    def take(self, positions: Sequence[int]) -> "MultiVectors":
        """The items at ``positions`` as a new (in-memory) set."""
        return MultiVectors.from_list([self[int(i)] for i in positions], dtype=self.vectors.dtype, dim=self.dim)


class DocIds:
    """External document ids by position, where a negative position (padding) reads as ``None``.

    ``numpy`` would map position ``-1`` to the last document; here it cannot be read as one.

    >>> d = DocIds(["a", "b"])
    >>> d[np.array([1, -1])].tolist(), d[0], len(d)
    (['b', None], 'a', 2)
    """

    __slots__ = ("_ids", "_n")

    def __init__(self, ids: Sequence[str] | np.ndarray | "DocIds") -> None:
        if isinstance(ids, DocIds):
            self._ids, self._n = ids._ids, ids._n
            return
        ids = np.asarray(ids, dtype=object)
        self._ids = ids if ids.ndim == 1 else ids.reshape(-1)  # an index's own array, not a view (same_as)
        self._n = int(self._ids.size)

    @classmethod
    def positions(cls, n: int) -> "DocIds":
        """Ids that are the positions themselves (``"0"``, ``"1"``, ...), made only when read."""
        d = cls.__new__(cls)
        d._ids, d._n = None, int(n)
        return d

    def _array(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.array([str(i) for i in range(self._n)], dtype=object)
        return self._ids

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        return iter(self._array())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._array() if dtype is None else self._array().astype(dtype)

    def __eq__(self, other: object) -> Any:
        return self._array() == np.asarray(other, dtype=object)

    def __repr__(self) -> str:
        return f"DocIds({self._array().tolist()!r})" if len(self) <= 6 else f"DocIds(<{len(self)} ids>)"

    def __getitem__(self, key: Any) -> Any:
        ids = self._array()
        if isinstance(key, slice):
            return ids[key]
        if isinstance(key, (int, np.integer)):
            if key < 0:
                raise IndexError(f"position {int(key)} is padding, not a document")
            return ids[key]
        pos = np.asarray(key)
        if pos.dtype == bool:
            return ids[pos]
        if pos.size and not np.issubdtype(pos.dtype, np.integer):
            raise TypeError(f"document positions must be integers, got dtype {pos.dtype}")
        pos = pos.astype(np.int64, copy=False)
        out = np.empty(pos.shape, dtype=object)
        valid = pos >= 0
        out[valid] = ids[pos[valid]]
        out[~valid] = None
        return out

    def tolist(self) -> list[str]:
        return self._array().tolist()

    def same_as(self, other: "DocIds") -> bool:
        """Whether ``other`` certainly holds the same ids (the same array, or positions of one
        length) without comparing them; False means "maybe not"."""
        if self._ids is None or other._ids is None:
            return self._ids is None and other._ids is None and self._n == other._n
        return self._ids is other._ids


@dataclass
class SearchResults:
    """Top-k results of a batch of queries: what every index and retriever in lsr returns.

    Attributes:
        ids: ``int64`` document positions, shape ``(nq, k)``, ``-1`` where fewer than k matched.
        scores: ``float32`` scores, shape ``(nq, k)``, best first.
        doc_ids: external document ids by position (:class:`DocIds`: ``doc_ids[ids]`` gives
            ``None`` for padding, never a document).
        fields: optional stored fields (``"title"``, ``"text"``, ``"metadata"``: a collection
            search's ``fields=``), each a list aligned with ``doc_ids``; ``None`` when not asked.

    Unpacks like FAISS's pair: ``ids, scores = index.search(queries, k)``.

    >>> r = SearchResults(np.array([[1, -1]]), np.array([[2.0, 0.0]], np.float32), ["a", "b"])
    >>> r.hits(0), r.external_ids().tolist()
    ([('b', 2.0)], [['b', None]])
    """

    ids: np.ndarray
    scores: np.ndarray
    doc_ids: DocIds
    fields: dict[str, list] | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids)
        self.scores = np.asarray(self.scores)
        if self.ids.ndim != 2 or self.ids.shape != self.scores.shape:
            raise ValueError(f"ids {self.ids.shape} and scores {self.scores.shape} must be equal (nq, k) arrays")
        if not isinstance(self.doc_ids, DocIds):
            self.doc_ids = DocIds(self.doc_ids)
        if self.fields is not None:
            for name, values in self.fields.items():
                if len(values) != len(self.doc_ids):
                    raise ValueError(f"field {name!r} has {len(values)} values for {len(self.doc_ids)} documents")

    @classmethod
    def empty(cls, k: int, doc_ids: Sequence[str] | np.ndarray | DocIds) -> "SearchResults":
        """Results for no queries."""
        return cls(np.empty((0, k), np.int64), np.empty((0, k), np.float32), doc_ids)

    @classmethod
    def concat(cls, parts: Sequence["SearchResults"], k: int, doc_ids: Any) -> "SearchResults":
        """Stack the results of consecutive query batches (all over ``doc_ids``); parts narrower
        than the widest are padded (position -1, score 0), as a search pads a short result list.

        >>> a = SearchResults(np.array([[0]]), np.array([[1.0]], np.float32), ["x", "y"])
        >>> SearchResults.concat([a, SearchResults.empty(2, ["x", "y"])], 2, ["x", "y"]).ids.tolist()
        [[0, -1]]
        """
        if not parts:
            return cls.empty(k, doc_ids)
        width = max(p.k for p in parts)
        ids = [np.pad(p.ids, ((0, 0), (0, width - p.k)), constant_values=-1) for p in parts]
        scores = [np.pad(p.scores, ((0, 0), (0, width - p.k))) for p in parts]
        return cls(np.concatenate(ids), np.concatenate(scores), doc_ids)

    def __iter__(self):
        yield self.ids
        yield self.scores

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def external_ids(self) -> np.ndarray:
        """``(nq, k)`` object array of external ids, ``None`` for padding."""
        return self.doc_ids[self.ids]

    def hits(self, i: int) -> list[tuple[str, float]]:
        """Query ``i``'s results as ``(doc_id, score)`` pairs, padding dropped."""
        keep = self.ids[i] >= 0
        ids = self.doc_ids[self.ids[i][keep]]
        return [(str(d), float(s)) for d, s in zip(ids, self.scores[i][keep])]

    def documents(self, i: int) -> list[dict[str, Any]]:
        """Query ``i``'s results as dicts ``{"_id", "score", "rank"}`` (rank from 1) plus the
        stored fields the search was asked for (``fields``), padding dropped.

        >>> r = SearchResults(np.array([[1, -1]]), np.array([[2.0, 0.0]], np.float32), ["a", "b"],
        ...                   fields={"text": ["x", "y"]})
        >>> r.documents(0)
        [{'_id': 'b', 'score': 2.0, 'rank': 1, 'text': 'y'}]
        """
        out = []
        for rank, (pos, score) in enumerate(zip(self.ids[i].tolist(), self.scores[i].tolist()), 1):
            if pos < 0:
                continue
            doc: dict[str, Any] = {"_id": str(self.doc_ids[pos]), "score": float(score), "rank": rank}
            for name, values in (self.fields or {}).items():
                doc[name] = values[pos]
            out.append(doc)
        return out

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """A run ``{qid: {doc_id: score}}`` for :func:`lsr.evaluate` and :func:`lsr.write_run`;
        ``query_ids[i]`` names row ``i`` (distinct ids: a repeated one would overwrite a row)."""
        if isinstance(query_ids, (str, bytes)):
            raise TypeError("query_ids must be a sequence of ids, not one string")
        query_ids = [str(q) for q in query_ids]
        if len(query_ids) != len(self):
            raise ValueError(f"{len(query_ids)} query ids for {len(self)} result rows")
        if len(set(query_ids)) != len(query_ids):
            seen: set[str] = set()
            dup = next(q for q in query_ids if q in seen or seen.add(q))
            raise ValueError(f"query id {dup!r} names more than one result row")
        return {q: dict(self.hits(i)) for i, q in enumerate(query_ids)}
