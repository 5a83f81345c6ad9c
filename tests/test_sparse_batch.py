from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import SparseBatch


def test_from_rows_merges_duplicates_and_sorts():
    b = SparseBatch.from_rows([([3, 1, 3], [0.5, 2.0, 1.0]), ([], [])], vocab=list("abcd"))
    assert b.indptr.dtype == np.int64 and b.indices.dtype == np.int32 and b.data.dtype == np.float32
    assert b.row(0)[0].tolist() == [1, 3] and b.row(0)[1].tolist() == [2.0, 1.5]
    assert len(b) == 2 and b.nnz == 2 and b.shape == (2, 4)
    assert b.decode(0) == [("b", 2.0), ("d", 1.5)] and b.decode(1) == []


def test_scipy_roundtrip_slice_concat():
    m = sp.random(10, 20, density=0.3, format="csr", dtype=np.float32, random_state=0)
    b = SparseBatch.from_scipy(m)
    assert (b.to_scipy() != m).nnz == 0
    assert (b[2:5].to_scipy() != m[2:5]).nnz == 0
    assert (SparseBatch.concat([b[:3], b[3:]]).to_scipy() != m).nnz == 0
    assert len(b[5:5]) == 0


def test_validation():
    with pytest.raises(ValueError, match="term ids"):
        SparseBatch.from_rows([([5], [1.0])], vocab_size=3)
    with pytest.raises(ValueError, match="weights"):
        SparseBatch.from_rows([([1, 2], [1.0])], vocab_size=3)
    with pytest.raises(ValueError, match="finite"):
        SparseBatch(np.array([0, 1]), np.array([0]), np.array([np.inf]), 2)
    with pytest.raises(ValueError, match="inconsistent"):
        SparseBatch(np.array([0, 2]), np.array([0]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="vocab has"):
        SparseBatch.from_rows([], vocab_size=3, vocab=["a"])
    with pytest.raises(TypeError):
        SparseBatch.from_scipy(np.eye(2))
    with pytest.raises(ValueError, match="no vocabulary"):
        SparseBatch.from_rows([([0], [1.0])], vocab_size=1).decode(0)
