"""Numba kernel of the collection's dense engine: inner products that do not depend on the batch.

Private to :mod:`lsr.collection.engines.dense`. BLAS matrix products give a (query, document)
pair a score that depends, in its last bit, on where the document sits in the matrix and on the
matrix's shape (edge blocks take other code paths): the same vector scored in two segments,
in two shards, or once with and once without a filter, can get scores one ulp apart, and the
order of documents with equal vectors (duplicate texts) then changes with the layout. Here every
pair's score is one fixed reduction over the dimensions of that query and that document alone
(compiled with fast math, so vectorised: its summation order is fixed at compile time, the same
for every pair), so equal vectors get equal scores and a document gets the same score wherever
it is stored. The order is that of this machine's compiled code: nodes with other instruction
sets can differ in the last bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["inner_products"]


@njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def inner_products(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[q, j] = queries[q] . vectors[rows[j]]`` (float32, C-contiguous inputs)."""
    nq, dim = queries.shape
    for j in range(rows.size):
        v = vectors[rows[j]]
        for qi in range(nq):
            q = queries[qi]
            s = np.float32(0.0)
            for i in range(dim):
                s += q[i] * v[i]
            out[qi, j] = s
