"""The ``allowed`` document mask of every index search, against brute force over the allowed
documents (dense scores masked, ties to the lower position), at several selectivities and on
each search path: numpy scan, scan kernel, MaxScore (forward rows, block cursors), the direct
scoring of few allowed documents, approximate mode (and its exact fallback), FAISS flat / HNSW /
IVF / IVF-PQ, MUVERA (FDE candidates + MaxSim) and brute-force MaxSim."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import InvertedIndex, MultiVectors
from lsr.index.maxsim import maxsim_rerank, maxsim_scores, maxsim_search

FRACTIONS = [0.5, 0.1, 0.01, "few", "none"]


@pytest.fixture(autouse=True)
def _numpy_scan_budget_unspent(monkeypatch):
    """The small cases go through the numpy scan: the process-wide budget starts unspent."""
    from lsr.index import inverted

    monkeypatch.setattr(inverted, "_NUMPY_WORK", [0])


def make_mask(n: int, frac, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if frac == "few":
        mask = np.zeros(n, bool)
        mask[rng.choice(n, 5, replace=False)] = True
        return mask
    if frac == "none":
        return np.zeros(n, bool)
    return rng.random(n) < frac


def ref_topk(scores: np.ndarray, match: np.ndarray, allowed: np.ndarray, k: int):
    """Per query: the allowed matching positions by (score desc, position asc), first k."""
    out = []
    for i in range(scores.shape[0]):
        cand = np.flatnonzero(match[i] & allowed)
        out.append(cand[np.lexsort((cand, -scores[i, cand]))][:k])
    return out


def check(ids, scores, full, ref, allowed, k, rtol=1e-5, atol=1e-5):
    """Same top-k as ``ref`` up to ties: equal scores rank by rank, returned ids allowed and unique,
    padding after the matches."""
    assert ids.shape == scores.shape and ids.shape[1] == k
    for i, r in enumerate(ref):
        n = r.size
        assert np.all(ids[i, n:] == -1) and np.all(scores[i, n:] == 0.0), f"query {i}: padding"
        got = ids[i, :n]
        assert np.all(got >= 0) and allowed[got].all(), f"query {i}: a disallowed or missing document"
        assert len(set(got.tolist())) == n
        np.testing.assert_allclose(scores[i, :n], full[i, r], rtol=rtol, atol=atol)
        np.testing.assert_allclose(full[i, got], full[i, r], rtol=rtol, atol=atol)


def random_csr(rng, n, v, density, low=0.01):
    m = sp.random(n, v, density=density, format="csr", dtype=np.float32, random_state=rng)
    m.data = (m.data + low).astype(np.float32)
    return m


def sparse_case(n, v, nq, density, qdensity, seed, quantize=None, forward=False, decoded=True, signed=False):
    rng = np.random.default_rng(seed)
    docs = random_csr(rng, n, v, density)
    queries = random_csr(rng, nq, v, qdensity)
    if signed:
        queries.data = (queries.data * rng.choice([-1.0, 1.0], queries.data.size)).astype(np.float32)
    index = InvertedIndex.from_csr(docs, quantize=quantize, forward=forward, decoded=decoded)
    ref_docs = index.to_csr().astype(np.float64)  # the (dequantised) weights the index scores with
    full = (queries.astype(np.float64) @ ref_docs.T).toarray()
    match = ((abs(queries) > 0).astype(np.int64) @ (abs(docs) > 0).astype(np.int64).T).toarray() > 0
    return index, queries, full, match


def run_sparse(case, mode, k, seed=5, threads=1, fractions=FRACTIONS, checked=150, **kw):
    """Search the whole batch (its size picks the path); compare the first ``checked`` queries."""
    index, queries, full, match = case
    full, match = full[:checked], match[:checked]
    for j, frac in enumerate(fractions):
        allowed = make_mask(index.n_docs, frac, seed + j)
        ids, scores = index.search(queries, k=k, mode=mode, threads=threads, allowed=allowed, **kw)
        check(ids[:checked], scores[:checked], full, ref_topk(full, match, allowed, k), allowed, k, rtol=1e-4,
              atol=1e-4)


@pytest.fixture(scope="module")
def small():  # exhaustive and exact go through the numpy scan (nq * n_docs <= NUMPY_SEARCH_WORK)
    return sparse_case(1500, 300, 40, 0.03, 0.02, 0)


@pytest.fixture(scope="module")
def scan():  # the compiled scan: exact below EXACT_SCAN_BELOW documents, above NUMPY_SEARCH_WORK
    case = sparse_case(4000, 300, 1100, 0.03, 0.02, 1)
    assert case[0].n_docs < InvertedIndex.EXACT_SCAN_BELOW and 1100 * 4000 > InvertedIndex.NUMPY_SEARCH_WORK
    return case


@pytest.fixture(scope="module")
def large():  # MaxScore: above EXACT_SCAN_BELOW documents
    case = sparse_case(36000, 400, 25, 0.02, 0.03, 2, quantize=8)
    assert case[0].n_docs >= InvertedIndex.EXACT_SCAN_BELOW
    return case


@pytest.mark.parametrize("mode", ["exact", "exhaustive"])
def test_numpy_scan_path(small, mode):
    run_sparse(small, mode, k=10)
    run_sparse(small, mode, k=200)  # k beyond the allowed matches: padded


@pytest.mark.parametrize("mode", ["exact", "exhaustive"])
def test_scan_kernel_path(scan, mode):
    run_sparse(scan, mode, k=10)
    run_sparse(scan, mode, k=10, threads=2)


@pytest.mark.parametrize("direct", [False, True])
def test_maxscore_and_direct_paths(large, direct, monkeypatch):
    # DIRECT_RATIO decides between MaxScore with the mask and scoring the allowed rows directly:
    # force each way; both must be the brute-force top-k among the allowed documents
    monkeypatch.setattr(large[0], "DIRECT_RATIO", 1e12 if direct else 0.0)
    run_sparse(large, "exact", k=10)
    run_sparse(large, "exact", k=50, threads=2, fractions=[0.1, 0.01])
    run_sparse(large, "exhaustive", k=10, fractions=[0.1, "few"])


@pytest.mark.parametrize("variant", ["float_forward", "in_place"])
def test_maxscore_variants(variant):
    # a stored forward copy (phase 2 on document rows) and blocks searched in place (cursors)
    kw = dict(forward=True) if variant == "float_forward" else dict(quantize=8, decoded=False)
    case = sparse_case(34000, 400, 15, 0.02, 0.03, 3, **kw)
    run_sparse(case, "exact", k=10, fractions=[0.5, 0.1, 0.01, "few"])


@pytest.mark.parametrize("where", ["small", "scan", "large"])
def test_signed_queries(where):
    # negative query weights: matches with a zero or negative total are returned too
    n, nq = {"small": (800, 30), "scan": (3000, 1500), "large": (33000, 10)}[where]
    case = sparse_case(n, 100, nq, 0.05, 0.05, 4, signed=True)
    run_sparse(case, "exact", k=20, fractions=[0.5, 0.1, "few"])


@pytest.mark.parametrize("direct", [False, True])
def test_signed_documents(direct, monkeypatch):
    # negative document weights (no upper bounds: the scan) and the direct rows alike
    rng = np.random.default_rng(12)
    case = sparse_case(3000, 100, 1500, 0.05, 0.05, 6)
    index, queries = case[0], case[1]
    docs = index.to_csr()
    docs.data = (docs.data * rng.choice([-1.0, 1.0], docs.data.size)).astype(np.float32)
    index = InvertedIndex.from_csr(docs)
    assert not index.positive
    monkeypatch.setattr(index, "DIRECT_RATIO", 1e12 if direct else 0.0)
    full = (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    match = ((abs(queries) > 0).astype(np.int64) @ (abs(docs) > 0).astype(np.int64).T).toarray() > 0
    run_sparse((index, queries, full, match), "exact", k=10, fractions=[0.1, 0.01, "few"])


def test_approximate_mode(large):
    index, queries, full, match = large
    kw = dict(mode="approximate", query_cut=5, n_postings=300, candidates=40)
    # few allowed (below FILTER_EXACT_BELOW): the exact top-k, k results whenever k are allowed
    for j, frac in enumerate([0.01, "few", "none"]):
        allowed = make_mask(index.n_docs, frac, 40 + j)
        assert allowed.sum() < index.FILTER_EXACT_BELOW * index.n_docs
        ids, scores = index.search(queries, k=10, allowed=allowed, **kw)
        check(ids, scores, full, ref_topk(full, match, allowed, 10), allowed, 10, rtol=1e-4, atol=1e-4)
    # many allowed: approximate candidates from the allowed documents only, high recall (the
    # unfiltered search reaches 0.99 with these settings on this data)
    for frac in (0.5, 0.1):
        allowed = make_mask(index.n_docs, frac, 50)
        ids, _ = index.search(queries, k=10, allowed=allowed, mode="approximate", n_postings=400, candidates=100)
        ref = ref_topk(full, match, allowed, 10)
        assert np.all(allowed[ids[ids >= 0]])
        recall = np.mean([len(set(ids[i].tolist()) & set(r.tolist())) / max(r.size, 1) for i, r in enumerate(ref)])
        assert recall >= 0.9


def test_all_allowed_is_the_unfiltered_search(large):
    index, queries = large[0], large[1]
    ids, scores = index.search(queries, k=10)
    for allowed in (np.ones(index.n_docs, bool), np.ones(index.n_docs, np.uint8)):
        ids2, scores2 = index.search(queries, k=10, allowed=allowed)
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_array_equal(scores2, scores)
    allowed = make_mask(index.n_docs, 0.1, 7)  # uint8 (non-zero = allowed) is the same as bool
    a = index.search(queries, k=10, allowed=allowed)
    b = index.search(queries, k=10, allowed=allowed.astype(np.uint8) * 3)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_bad_allowed_is_refused(small):
    index, queries = small[0], small[1]
    n = index.n_docs
    for bad, words in [(np.ones(n - 1, bool), "shape"), (np.ones(n, np.float32), "dtype"),
                       ([True] * n, "numpy"), (np.ones((n, 1), bool), "shape")]:
        with pytest.raises(ValueError, match=words):
            index.search(queries, k=5, allowed=bad)


# ---------------------------------------------------------------------------- dense
faiss = pytest.importorskip("faiss")
from lsr.index.dense import DenseIndex  # noqa: E402


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(9)
    centers = rng.normal(size=(20, 16))
    x = (centers[rng.integers(0, 20, 4000)] + 0.5 * rng.normal(size=(4000, 16))).astype(np.float32)
    q = (centers[rng.integers(0, 20, 30)] + 0.5 * rng.normal(size=(30, 16))).astype(np.float32)
    return x, q


def dense_ref(x, q, allowed, k):
    full = q.astype(np.float64) @ x.astype(np.float64).T
    return full, ref_topk(full, np.ones_like(full, bool), allowed, k)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_dense_filtered(vectors, kind):
    x, q = vectors
    params = dict(ef_construction=40) if kind == "hnsw" else {}
    index = DenseIndex.build(x, index_type=kind, use_gpu=False, **params)
    for j, frac in enumerate(FRACTIONS):
        allowed = make_mask(len(x), frac, 60 + j)
        ids, scores = index.search(q, k=10, allowed=allowed)
        full, ref = dense_ref(x, q, allowed, 10)
        n = min(10, int(allowed.sum()))
        assert np.all(ids[:, :n] >= 0) and np.all(ids[:, n:] == -1), "k results whenever k are allowed"
        assert allowed[ids[ids >= 0]].all()
        exact = kind == "flat" or allowed.sum() < index.FILTER_EXACT_BELOW * len(x)
        if exact:
            check(ids, scores, full, ref, allowed, 10, rtol=1e-4, atol=1e-4)
        else:
            hits = np.mean([len(set(ids[i].tolist()) & set(r.tolist())) / r.size for i, r in enumerate(ref)])
            assert hits >= 0.8


def test_dense_selector_shortfall_falls_back_to_exact(vectors, monkeypatch):
    # a tiny ef_search with 20 allowed of 4000 and the exact switch off: the graph search finds
    # fewer than k allowed vectors for some queries, which are then answered exactly
    x, q = vectors
    index = DenseIndex.build(x, index_type="hnsw", ef_search=4, ef_construction=40, use_gpu=False)
    monkeypatch.setattr(index, "FILTER_EXACT_BELOW", 0.0)
    allowed = np.zeros(len(x), bool)
    allowed[np.random.default_rng(3).choice(len(x), 20, replace=False)] = True
    ids, _ = index.search(q, k=10, allowed=allowed)
    assert np.all(ids >= 0) and allowed[ids].all()


def test_ivfpq_few_allowed_scores_reconstructed_vectors(vectors):
    x, q = vectors
    index = DenseIndex.build(x, index_type="ivfpq", pq_m=4, pq_bits=4, use_gpu=False)
    allowed = make_mask(len(x), 0.01, 70)
    ids, scores = index.search(q, k=10, allowed=allowed)
    rows = np.flatnonzero(allowed)
    clone = faiss.clone_index(index._cpu)  # IVF-PQ's decoded vectors, through FAISS's own direct map
    faiss.extract_index_ivf(clone).make_direct_map()
    rec = np.zeros_like(x)
    rec[rows] = clone.reconstruct_batch(rows)
    full, ref = dense_ref(rec, q, allowed, 10)
    check(ids, scores, full, ref, allowed, 10, rtol=1e-4, atol=1e-4)


def test_dense_bad_allowed(vectors):
    x, q = vectors
    index = DenseIndex.build(x[:100])
    with pytest.raises(ValueError, match="shape"):
        index.search(q, k=3, allowed=np.ones(99, bool))


# ---------------------------------------------------------------------------- multi-vector
@pytest.fixture(scope="module")
def multi():
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(10, 16))

    def sample(n):
        v = centers[rng.integers(0, 10, n)] + 0.7 * rng.normal(size=(n, 16))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    docs = MultiVectors.from_list([sample(int(rng.integers(3, 12))) for _ in range(300)], dtype=np.float16)
    queries = MultiVectors.from_list([sample(4) for _ in range(12)])
    full = maxsim_scores(queries, docs).astype(np.float64)
    return docs, queries, full


@pytest.mark.parametrize("frac", [0.8, 0.3, 0.05, "few", "none"])  # 0.8: all scored then masked
def test_maxsim_search_filtered(multi, frac):
    docs, queries, full = multi
    allowed = make_mask(len(docs), frac, 80)
    ids, scores = maxsim_search(queries, docs, k=10, allowed=allowed)
    check(ids, scores, full, ref_topk(full, np.ones_like(full, bool), allowed, 10), allowed, 10, rtol=1e-4)


def test_maxsim_rerank_drops_disallowed(multi):
    docs, queries, full = multi
    allowed = make_mask(len(docs), 0.3, 81)
    cand = np.tile(np.arange(len(docs)), (len(queries), 1))  # every document a candidate
    ids, scores = maxsim_rerank(queries, docs, cand, k=10, allowed=allowed)
    check(ids, scores, full, ref_topk(full, np.ones_like(full, bool), allowed, 10), allowed, 10, rtol=1e-4)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_fde_search_filtered(multi, kind):
    from lsr.index.muvera import FDEConfig, FDEIndex

    docs, queries, full = multi
    index = FDEIndex.build(docs, FDEConfig(dim=16, k_sim=3, d_proj=8, reps=4), candidates=40, index_type=kind)
    for j, frac in enumerate([0.5, 0.05, "few", "none"]):
        allowed = make_mask(len(docs), frac, 90 + j)
        ids, scores = index.search(queries, k=10, allowed=allowed)
        n = min(10, int(allowed.sum()))
        assert np.all(ids[:, :n] >= 0) and np.all(ids[:, n:] == -1)
        assert allowed[ids[ids >= 0]].all()
        if allowed.sum() <= 40:  # every allowed document is a candidate: exact MaxSim among them
            check(ids, scores, full, ref_topk(full, np.ones_like(full, bool), allowed, 10), allowed, 10, rtol=1e-4)
        else:  # scores are exact MaxSim of the returned documents
            sel = ids >= 0
            np.testing.assert_allclose(scores[sel], np.take_along_axis(full, np.maximum(ids, 0), 1)[sel], rtol=1e-4)
