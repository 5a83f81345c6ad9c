"""PRF: RM3 and Rocchio against plain-Python references; interpolation before/after/both."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lsr.fusion.combine import fuse_arrays
from lsr.retrievers.hybrid import HybridRetriever, prf_interpolation
from lsr.retrievers.prf import SparsePRF, doc_major, prf_for, rm3, rocchio
from lsr.retrievers.sparse import BM25Retriever
from lsr.index.inverted import InvertedIndex


def _rm3_reference(q: dict[int, float], docs: list[dict[int, float]], fb: list[int], fb_scores: list[float],
                   fb_terms: int, alpha: float) -> dict[int, float]:
    total = sum(fb_scores)
    rm: dict[int, float] = {}
    for d, s in zip(fb, fb_scores):
        length = sum(docs[d].values())
        for t, w in docs[d].items():
            rm[t] = rm.get(t, 0.0) + (s / total) * w / length
    top = sorted(rm.items(), key=lambda kv: -kv[1])[:fb_terms]
    z = sum(v for _, v in top)
    mass = sum(q.values())
    out = {t: alpha * w / mass for t, w in q.items()}
    for t, v in top:
        out[t] = out.get(t, 0.0) + (1 - alpha) * v / z
    return {t: v * mass for t, v in out.items() if v}


def test_rm3_matches_reference():
    rng = np.random.default_rng(0)
    V, n = 50, 12
    dense = rng.random((n, V)) * (rng.random((n, V)) < 0.3)
    docs = [{t: float(dense[d, t]) for t in np.flatnonzero(dense[d])} for d in range(n)]
    qd = np.zeros((2, V))
    qd[0, [1, 5, 9]] = [1.0, 2.0, 1.0]
    qd[1, [3]] = [1.5]
    fb = np.array([[0, 4, 7], [2, 3, -1]])
    fs = np.array([[3.0, 2.0, 1.0], [1.0, 0.5, 0.0]])
    out = rm3(sp.csr_matrix(qd), sp.csr_matrix(dense), fb, fs, fb_terms=5, alpha=0.6).toarray()
    for i in range(2):
        keep = fb[i] >= 0
        ref = _rm3_reference({t: qd[i, t] for t in np.flatnonzero(qd[i])}, docs, fb[i][keep].tolist(),
                             fs[i][keep].tolist(), 5, 0.6)
        got = {t: out[i, t] for t in np.flatnonzero(out[i])}
        assert got == pytest.approx(ref, rel=1e-5)


def test_rm3_edge_cases():
    q = sp.csr_matrix(np.array([[1.0, 0, 0], [0, 0, 0]]))
    d = sp.csr_matrix(np.array([[0, 1.0, 0]]))
    out = rm3(q, d, np.array([[-1], [0]]), None, alpha=0.5).toarray()
    assert out[0].tolist() == [1.0, 0, 0]          # no feedback: the query unchanged
    assert out[1].tolist() == [0, 0, 0]            # empty query stays empty
    same = rm3(q, d, np.array([[0], [0]]), None, alpha=1.0).toarray()
    assert same[0].tolist() == [1.0, 0, 0]
    with pytest.raises(ValueError, match="alpha"):
        rm3(q, d, np.array([[0], [0]]), alpha=1.5)


def test_doc_major_inverts_the_postings():
    m = sp.random(30, 40, density=0.2, random_state=2, dtype=np.float32, format="csr")
    index = InvertedIndex.from_csr(m, doc_ids=[f"d{i}" for i in range(30)])
    assert (doc_major(index) != m).nnz == 0


def test_rocchio_matches_numpy():
    rng = np.random.default_rng(3)
    q, docs = rng.normal(size=(2, 8)), rng.normal(size=(10, 8))
    fb = np.array([[1, 2, 3], [4, -1, -1]])
    out = rocchio(q, docs, fb, alpha=0.7, beta=0.3)
    for i in range(2):
        ref = 0.7 * q[i] + 0.3 * docs[fb[i][fb[i] >= 0]].mean(0)
        np.testing.assert_allclose(out[i], ref / np.linalg.norm(ref), rtol=1e-5)


def test_sparse_prf_with_bm25_retriever():
    ids = ["d1", "d2", "d3", "d4"]
    texts = ["heart disease cholesterol", "heart attack cholesterol statin", "stock market", "statin drug trial"]
    r = BM25Retriever()
    r.index(ids, texts)
    prf = prf_for(r, sparse={"fb_docs": 2, "fb_terms": 5, "alpha": 0.5})
    assert isinstance(prf, SparsePRF)
    base = r.search(["heart disease"], k=4)
    res = prf.search(["heart disease"], k=4)
    # the expansion (cholesterol, statin, attack) reaches d4, which the query alone cannot
    assert "d4" not in dict(base.hits(0)) and "d4" in dict(res.hits(0))
    # explicit feedback documents are honoured
    fixed = prf.search(["heart disease"], k=4, feedback=[["d3"]])
    assert "d3" in dict(fixed.hits(0))


def _fake_components():
    """Two components over ids 0..9 whose PRF runs record the feedback they received."""
    seen = {}
    first = [(np.array([[3, 1, 2, 0]]), np.array([[4.0, 3.0, 2.0, 1.0]])),
             (np.array([[5, 2, 1, 7]]), np.array([[0.9, 0.8, 0.7, 0.1]]))]

    def prf(i):
        def call(fb_ids, fb_scores):
            seen.setdefault(i, []).append(fb_ids[0, :2].tolist())
            return np.array([[8 + i, 9 - i]]), np.array([[1.0, 0.5]])
        return call
    return first, [prf(0), prf(1)], seen


def test_interpolation_modes():
    kw = {"norm": "min-max", "method": "wsum", "k": 10}
    first, calls, seen = _fake_components()
    none, _ = prf_interpolation(first, calls, "none", kw)
    ref = fuse_arrays([f[0] for f in first], [f[1] for f in first], **kw)
    assert np.array_equal(none[0], ref.ids) and not seen

    first, calls, seen = _fake_components()
    after, runs = prf_interpolation(first, calls, "after", kw, fb_docs=2)
    assert seen == {0: [[3, 1]], 1: [[5, 2]]}                   # each on its own ranking
    assert np.array_equal(after[0], fuse_arrays([r[0] for r in runs], [r[1] for r in runs], **kw).ids)

    first, calls, seen = _fake_components()
    before, runs = prf_interpolation(first, calls, "before", kw, fb_docs=2, target=1)
    hybrid_top = ref.ids[0, :2].tolist()
    assert seen == {0: [hybrid_top], 1: [hybrid_top]}           # feedback from the fused ranking
    assert np.array_equal(before[0], runs[1][0])                # no second interpolation

    first, calls, seen = _fake_components()
    both, runs = prf_interpolation(first, calls, "both", kw, fb_docs=2)
    assert seen == {0: [hybrid_top], 1: [hybrid_top]}
    assert np.array_equal(both[0], fuse_arrays([r[0] for r in runs], [r[1] for r in runs], **kw).ids)
    with pytest.raises(ValueError, match="prf mode"):
        prf_interpolation(first, calls, "sideways", kw)


@pytest.mark.parametrize("mode", ["after", "before", "both"])
def test_hybrid_retriever_prf_modes_run(mode):
    ids = [f"d{i}" for i in range(6)]
    texts = ["heart disease cholesterol", "heart attack cholesterol statin", "stock market crash",
             "statin drug trial", "market prices", "disease outbreak"]
    h = HybridRetriever([BM25Retriever(), BM25Retriever(k1=0.3, b=1.0)], prf=mode,
                        prf_params={"fb_docs": 2, "sparse": {"fb_docs": 2, "fb_terms": 5}})
    h.index(ids, texts)
    res = h.search(["heart disease"], k=3)
    assert res.ids.shape == (1, 3) and res.hits(0)[0][0] in ("d0", "d1")


class _BagEncoder:
    """A tiny deterministic 'dense' encoder: normalised bag of hashed words (no model download)."""

    dim = 16

    def _enc(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, sum(map(ord, w)) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    encode_queries = encode_documents = lambda self, texts, **kw: self._enc(texts)

    def config(self):
        return {"type": "bag"}


def test_dense_prf_uses_index_vectors_and_matches_rocchio():
    pytest.importorskip("faiss")
    from lsr.retrievers.bi_encoder import DenseRetriever
    from lsr.retrievers.prf import DensePRF

    texts = ["heart disease cholesterol", "heart attack cholesterol statin", "stock market", "statin drug trial"]
    r = DenseRetriever(_BagEncoder())
    r.index_vectors(["d1", "d2", "d3", "d4"], r.encoder.encode_documents(texts))
    prf = prf_for(r, dense={"fb_docs": 2, "alpha": 1.0, "beta": 0.5})
    assert isinstance(prf, DensePRF)
    res = prf.search(["heart disease"], k=4)
    q = r.encoder.encode_queries(["heart disease"])
    first = r.search(["heart disease"], k=2)
    docs = r.encoder.encode_documents(texts)
    q2 = rocchio(q, docs, first.ids, alpha=1.0, beta=0.5)
    expected = np.argsort(-(docs @ q2[0]), kind="stable")
    assert res.ids[0].tolist() == expected.tolist()
    np.testing.assert_allclose(res.scores[0], np.sort(docs @ q2[0])[::-1], rtol=1e-5)
