"""Document vectors computed beforehand, looked up by document id, for a collection to index.

A model's vector of a document depends, in its last bits, on the batch it was encoded in (padding
length, matrix shapes): two collections that encode the same documents in different batches (one
collection and the shards of a sharded one, or a collection built twice in another order) can
rank documents whose scores are within 1e-6 differently. Encoding a corpus once (``lsr encode``,
possibly on a Ray cluster) and giving every build the same vectors makes their rankings
identical, and a collection built this way needs no model for its documents at all:

>>> vectors = EncodedDocuments.from_shards("out/splade-docs")      # doctest: +SKIP
>>> col = Collection.create("col", "splade", model="naver/splade-v3")  # doctest: +SKIP
>>> col.add(docs, vectors=vectors)                                  # doctest: +SKIP

The engine checks that the vectors are of its kind and width and, when the vectors record their
encoder's settings (``lsr encode`` shards do), that those are its own (a mismatch is refused: the
queries would be encoded by another model).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from lsr.types import SparseBatch

__all__ = ["EncodedDocuments", "check_vectors"]


class EncodedDocuments:
    """Vectors by document id: sparse (a :class:`~lsr.types.SparseBatch` or scipy sparse rows) or
    dense (a 2-d float array), row ``i`` for ``ids[i]``.

    Args:
        ids: the documents' ids (unique strings).
        vectors: one row per id.
        config: the encoder's settings (``encoder.config()``), checked against the collection's
            encoder when given.
        source: named in errors (a directory, "vectors").
    """

    def __init__(self, ids: Sequence[str], vectors: Any, config: Mapping[str, Any] | None = None,
                 source: str = "vectors") -> None:
        self.source = str(source)
        self.ids = [str(i) for i in ids]
        self.config = dict(config) if config is not None else None
        self._row: dict[str, int] = {}
        for r, doc_id in enumerate(self.ids):
            if self._row.setdefault(doc_id, r) != r:
                raise ValueError(f"{self.source}: document id {doc_id!r} appears twice")
        if isinstance(vectors, SparseBatch) or hasattr(vectors, "tocsr"):
            import scipy.sparse as sp

            if isinstance(vectors, SparseBatch):
                vectors = sp.csr_matrix((vectors.data, vectors.indices, vectors.indptr),
                                        shape=(vectors.indptr.size - 1, vectors.vocab_size))
            self.kind, self.vectors = "sparse", vectors.tocsr()
        else:
            arr = np.asarray(vectors, dtype=np.float32)
            if arr.ndim != 2:
                raise ValueError(f"{self.source}: dense vectors must be a 2-d array, got shape {arr.shape}")
            self.kind, self.vectors = "dense", arr
        if self.vectors.shape[0] != len(self.ids):
            raise ValueError(f"{self.source}: {self.vectors.shape[0]} vectors for {len(self.ids)} ids")
        values = self.vectors.data if self.kind == "sparse" else self.vectors
        if values.size and not np.isfinite(values).all():
            if self.kind == "sparse":
                bad_entry = int(np.flatnonzero(~np.isfinite(values))[0])
                bad = int(np.searchsorted(self.vectors.indptr, bad_entry, side="right") - 1)
            else:
                bad = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise ValueError(f"{self.source}: the vector of document {self.ids[bad]!r} is not finite (NaN or inf)")

    @classmethod
    def from_shards(cls, path: str | os.PathLike) -> "EncodedDocuments":
        """The vectors of an ``lsr encode`` output directory (checked; its encoder settings kept)."""
        from lsr.io.shards import load_shards, read_progress

        config = read_progress(path).get("encoder")
        ids, batch = load_shards(path)
        return cls(ids, batch, config if isinstance(config, dict) else None, source=str(path))

    @property
    def width(self) -> int:
        """Vocabulary size (sparse) or dimension (dense)."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def _rows(self, ids: Sequence[str]) -> np.ndarray:
        rows = np.empty(len(ids), np.int64)
        for j, doc_id in enumerate(ids):
            r = self._row.get(doc_id)
            if r is None:
                raise ValueError(f"{self.source}: no vector for document {doc_id!r}")
            rows[j] = r
        return rows

    def require(self, ids: Sequence[str]) -> None:
        """``ValueError`` naming the first of ``ids`` without a vector."""
        self._rows(ids)

    def take(self, ids: Sequence[str]) -> Any:
        """The rows of ``ids``, in order: a SparseBatch or an ``(n, dim)`` float32 array."""
        rows = self._rows(ids)
        if self.kind == "dense":
            return np.ascontiguousarray(self.vectors[rows])
        sub = self.vectors[rows]
        sub.sum_duplicates()  # sorted, unique term ids per row (a SparseBatch's rule)
        return SparseBatch(sub.indptr.astype(np.int64), sub.indices.astype(np.int32),
                           sub.data.astype(np.float32), int(sub.shape[1]))

    def subset(self, ids: Sequence[str]) -> "EncodedDocuments":
        """These documents' vectors alone (what one shard of a sharded build is sent)."""
        rows = self._rows(ids)
        return EncodedDocuments([self.ids[r] for r in rows], self.vectors[rows], self.config, self.source)

    def check(self, kind: str, width: int, config: Mapping[str, Any], keys: Sequence[str], engine: str) -> None:
        """``ValueError`` unless these are ``kind`` vectors of ``width`` made with ``config``'s
        ``keys`` (compared only when this object records its encoder's settings)."""
        if self.kind != kind:
            raise ValueError(f"{self.source}: {self.kind} vectors, but a {engine} collection indexes {kind} ones")
        if self.width != width:
            what = "vocabulary" if kind == "sparse" else "dimension"
            raise ValueError(f"{self.source}: {what} {self.width}, but the {engine} collection's encoder has {width}")
        if self.config is None:
            return
        for key in keys:
            if key in self.config and key in config and _norm(key, self.config[key]) != _norm(key, config[key]):
                raise ValueError(f"{self.source}: encoded with {key}={self.config[key]!r}, but the {engine} "
                                 f"collection's encoder has {key}={config[key]!r}")

    def __repr__(self) -> str:
        return f"EncodedDocuments({self.source!r}, {len(self)} {self.kind} vectors of width {self.width})"


def check_vectors(vectors: Any, kind: str, width: int, config: Mapping[str, Any], keys: Sequence[str],
                  engine: str) -> None:
    """An engine's check of given vectors: an :class:`EncodedDocuments` (else ``TypeError``) that
    passes :meth:`EncodedDocuments.check`."""
    if not isinstance(vectors, EncodedDocuments):
        raise TypeError(f"vectors: an EncodedDocuments, not {type(vectors).__name__}")
    vectors.check(kind, width, config, keys, engine)


def _norm(key: str, value: Any) -> Any:
    """A model named by two paths of one local directory is the same model."""
    if key == "model" and isinstance(value, str) and os.path.isdir(value):
        return os.path.realpath(value)
    return value
