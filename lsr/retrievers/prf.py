"""Pseudo-relevance feedback: RM3 for sparse retrievers, Rocchio (vector PRF) for dense ones.

Both take the feedback documents from *any* ranking (their own first pass, or a fused hybrid
ranking: see :func:`lsr.retrievers.hybrid.prf_interpolation` for interpolation before/after/both).

**RM3 over sparse vectors.** The inverted index stores term-major postings; RM3 needs the
feedback documents' vectors. :func:`doc_major` transposes the postings once into a doc-major CSR
matrix (one O(nnz) pass, same memory as the index, built lazily and kept by :class:`SparsePRF`,
never saved: the index stays the single source of truth and works for every encoder, BM25
included, without re-encoding texts). With ``w(t, d)`` the stored impact (BM25 term weight or
SPLADE weight) and ``s(d)`` the feedback document's first-pass score:

    P(t|d) = w(t,d) / sum_t w(t,d),   P(d|q) = s(d) / sum_d s(d)   (uniform if scores are not positive)
    RM1(t) = sum_d P(d|q) P(t|d), keep the ``fb_terms`` best terms, renormalise to sum 1
    q'     = |q|_1 * (alpha * q / |q|_1 + (1 - alpha) * RM1)        (RM3; Anserini: 10 docs, 10 terms, 0.5)

The expanded query keeps the original query's L1 mass, so its scores stay on the original scale.

**Rocchio for dense vectors.** ``q' = alpha q + beta mean(v_d for the feedback docs)``, L2
normalised again when the model's vectors are (cosine); Li et al.'s vector PRF uses 3 feedback
documents. Document vectors come from the FAISS index (``reconstruct``: exact for flat and HNSW,
the quantised vector for IVF-PQ).

>>> import numpy as np, scipy.sparse as sp
>>> docs = sp.csr_matrix(np.array([[2.0, 1.0, 0, 0], [0, 1.0, 3.0, 0]], dtype=np.float32))
>>> q = sp.csr_matrix(np.array([[1.0, 0, 0, 0]], dtype=np.float32))
>>> rm3(q, docs, np.array([[0]]), np.array([[1.0]]), fb_terms=2, alpha=0.5).toarray().astype(float).round(3).tolist()
[[0.833, 0.167, 0.0, 0.0]]
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from lsr.retrievers.base import SearchResults

logger = logging.getLogger(__name__)

__all__ = ["doc_major", "rm3", "rocchio", "SparsePRF", "DensePRF", "prf_for"]


def doc_major(index: Any):
    """Doc-major ``scipy.sparse.csr_matrix`` ``(n_docs, vocab)`` of an :class:`InvertedIndex`
    (the weights its exact search scores with: dequantised impacts of a quantised index)."""
    return index.to_csr()


def rm3(queries: Any, docs: Any, fb_ids: np.ndarray, fb_scores: np.ndarray | None = None,
        fb_terms: int = 10, alpha: float = 0.5):
    """RM3-expanded query vectors (``csr_matrix`` ``(nq, vocab)``).

    Args:
        queries: query vectors, a SparseBatch or scipy matrix ``(nq, vocab)``.
        docs: doc-major document vectors (:func:`doc_major`), ``(n_docs, vocab)``.
        fb_ids: ``(nq, fb_docs)`` feedback document positions (rows of ``docs``), ``-1`` = none.
        fb_scores: their first-pass scores (document weights); uniform when None.
        fb_terms: expansion terms kept from the relevance model.
        alpha: weight of the original query (1 = no expansion).
    """
    import scipy.sparse as sp

    from lsr.types import SparseBatch

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    q = queries.to_scipy() if isinstance(queries, SparseBatch) else sp.csr_matrix(queries)
    q = q.astype(np.float64).tocsr()
    fb_ids = np.asarray(fb_ids, dtype=np.int64)
    nq = q.shape[0]
    if fb_ids.ndim != 2 or fb_ids.shape[0] != nq:
        raise ValueError(f"fb_ids must be (nq={nq}, fb_docs), got {fb_ids.shape}")
    valid = fb_ids >= 0
    if fb_scores is None:
        weights = valid.astype(np.float64)
    else:
        weights = np.where(valid, np.asarray(fb_scores, dtype=np.float64), 0.0)
        bad = ~(weights > 0).any(axis=1) | (weights < 0).any(axis=1)
        weights[bad] = valid[bad]            # non-positive scores: uniform over the feedback docs
    wsum = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, wsum, out=np.zeros_like(weights), where=wsum > 0)
    d = sp.csr_matrix(docs).astype(np.float64)
    dnorm = np.asarray(d.sum(axis=1)).ravel()
    rows, cols, vals = [], [], []
    for i in range(nq):
        ids = fb_ids[i][valid[i]]
        w = weights[i][valid[i]] / np.maximum(dnorm[ids], 1e-12)
        rm = (sp.diags(w) @ d[ids]).sum(axis=0).A1 if ids.size else np.zeros(d.shape[1])
        qi = q.getrow(i)
        mass = qi.sum()
        if rm.sum() <= 0 or alpha == 1 or mass <= 0:
            rows.append(np.full(qi.nnz, i)), cols.append(qi.indices), vals.append(qi.data)
            continue
        top = np.argpartition(-rm, min(fb_terms, rm.size - 1))[:fb_terms]
        top = top[rm[top] > 0]
        rmv = np.zeros(d.shape[1])
        rmv[top] = rm[top] / rm[top].sum()
        new = alpha * qi.toarray().ravel() / mass + (1 - alpha) * rmv
        nz = np.flatnonzero(new)
        rows.append(np.full(nz.size, i)), cols.append(nz), vals.append(new[nz] * mass)
    r, c, v = (np.concatenate(x) if x else np.zeros(0) for x in (rows, cols, vals))
    return sp.csr_matrix((v.astype(np.float32), (r.astype(np.int64), c.astype(np.int64))), shape=q.shape)


def rocchio(queries: np.ndarray, doc_vectors: np.ndarray, fb_ids: np.ndarray, alpha: float = 1.0,
            beta: float = 1.0, normalize: bool = True) -> np.ndarray:
    """Rocchio / vector PRF: ``alpha q + beta mean(feedback doc vectors)`` (L2-normalised if asked).

    ``doc_vectors`` is ``(n_docs, dim)`` or any object indexable by an array of positions."""
    q = np.asarray(queries, dtype=np.float32)
    fb_ids = np.asarray(fb_ids, dtype=np.int64)
    if q.ndim != 2 or fb_ids.ndim != 2 or fb_ids.shape[0] != q.shape[0]:
        raise ValueError(f"queries (nq, dim) and fb_ids (nq, fb_docs) needed, got {q.shape} and {fb_ids.shape}")
    out = alpha * q.copy()
    for i in range(q.shape[0]):
        ids = fb_ids[i][fb_ids[i] >= 0]
        if ids.size:
            out[i] += beta * np.asarray(doc_vectors[ids], dtype=np.float32).mean(axis=0)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _positions(doc_ids: np.ndarray, feedback: Sequence[Sequence[str]]) -> np.ndarray:
    """External feedback ids -> positions (-1 if not in this index)."""
    lookup = {str(d): i for i, d in enumerate(doc_ids)}
    width = max((len(f) for f in feedback), default=0)
    out = np.full((len(feedback), max(width, 1)), -1, dtype=np.int64)
    for i, f in enumerate(feedback):
        for j, d in enumerate(f):
            out[i, j] = lookup.get(str(d), -1)
    return out


class SparsePRF:
    """RM3 for any :class:`~lsr.retrievers.sparse.SparseRetriever` (BM25, SPLADE, inference-free).

    ``search(queries, k, feedback=None)``: feedback documents are the retriever's own top
    ``fb_docs`` (first pass), or the given external ids per query (e.g. a hybrid ranking's)."""

    def __init__(self, retriever: Any, fb_docs: int = 10, fb_terms: int = 10, alpha: float = 0.5) -> None:
        self.retriever, self.fb_docs, self.fb_terms, self.alpha = retriever, fb_docs, fb_terms, alpha
        self._docs = None

    @property
    def doc_vectors(self):
        if self._docs is None:
            self._docs = doc_major(self.retriever.inverted_index)
        return self._docs

    def search(self, queries: Sequence[str], k: int = 10, feedback: Sequence[Sequence[str]] | None = None,
               feedback_scores: np.ndarray | None = None, threads: int = 1) -> SearchResults:
        index = self.retriever.inverted_index
        q = self.retriever.encoder.encode_queries(list(queries))
        if feedback is None:
            fb, fb_scores = index.search(q, k=self.fb_docs, threads=threads)
        else:
            fb = _positions(index.doc_ids, [list(f)[:self.fb_docs] for f in feedback])
            fb_scores = None if feedback_scores is None else np.asarray(feedback_scores)[:, :fb.shape[1]]
        expanded = rm3(q, self.doc_vectors, fb, fb_scores, self.fb_terms, self.alpha)
        ids, scores = index.search(expanded, k=k, threads=threads)
        return SearchResults(ids, scores, index.doc_ids)


class DensePRF:
    """Rocchio vector PRF for a :class:`~lsr.retrievers.bi_encoder.DenseRetriever` (FAISS index)."""

    def __init__(self, retriever: Any, fb_docs: int = 3, alpha: float = 1.0, beta: float = 1.0,
                 normalize: bool = True) -> None:
        self.retriever, self.fb_docs, self.alpha, self.beta, self.normalize = retriever, fb_docs, alpha, beta, normalize

    def _doc_vectors(self, ids: np.ndarray) -> np.ndarray:
        flat = np.unique(ids[ids >= 0])
        vecs = self.retriever.dense_index.reconstruct(flat)
        table = dict(zip(flat.tolist(), range(flat.size)))

        class _View:  # positions -> rows of vecs
            def __getitem__(self, pos):
                return vecs[[table[int(p)] for p in pos]]
        return _View()

    def search(self, queries: Sequence[str], k: int = 10, feedback: Sequence[Sequence[str]] | None = None,
               feedback_scores: np.ndarray | None = None, threads: int = 1) -> SearchResults:
        index = self.retriever.dense_index
        q = np.asarray(self.retriever.encoder.encode_queries(list(queries)), dtype=np.float32)
        if feedback is None:
            fb, _ = index.search(q, k=self.fb_docs, threads=threads)
        else:
            fb = _positions(index.doc_ids, [list(f)[:self.fb_docs] for f in feedback])
        q2 = rocchio(q, self._doc_vectors(fb), fb, self.alpha, self.beta, self.normalize)
        ids, scores = index.search(q2, k=k, threads=threads)
        return SearchResults(ids, scores, index.doc_ids)


def prf_for(retriever: Any, sparse: dict[str, Any] | None = None,
            dense: dict[str, Any] | None = None) -> SparsePRF | DensePRF | None:
    """The PRF that fits a retriever: RM3 (``sparse`` parameters) for one with an inverted index,
    Rocchio (``dense`` parameters) for one with a dense index, None otherwise (no PRF)."""
    if hasattr(retriever, "inverted_index") and hasattr(retriever, "encoder"):
        return SparsePRF(retriever, **(sparse or {}))
    if hasattr(retriever, "dense_index") and hasattr(retriever, "encoder"):
        return DensePRF(retriever, **(dense or {}))
    return None
