"""Exact MaxScore, 8-bit impacts and the approximate mode against a numpy/scipy brute force."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import InvertedIndex, SparseBatch
from lsr.index.inverted import coarse_codes, fine_codes, quantization_for


def dequantised(docs: sp.csr_matrix) -> sp.csr_matrix:
    """The 8-bit scores' document matrix, computed independently of the index arrays."""
    m = sp.csr_matrix(docs, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    q = quantization_for(float(m.data.max()))
    c16 = np.clip(np.rint(m.data.astype(np.float64) / q["fine_scale"]), 1, 65535)
    c8 = np.maximum(1, np.floor((c16 + 128) / 257))
    m.data = (c8 * q["scale"]).astype(np.float64)
    return m


def brute(docs: sp.csr_matrix, queries: sp.csr_matrix, k: int):
    """(ids, scores) per query in float64: matching docs by score desc, then position asc."""
    full = (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    match = ((abs(queries) > 0).astype(np.int64) @ (abs(docs) > 0).astype(np.int64).T).toarray() > 0
    out = []
    for i in range(queries.shape[0]):
        cand = np.flatnonzero(match[i])
        order = cand[np.lexsort((cand, -full[i, cand]))][:k]
        out.append((order, full[i, order]))
    return out, full


def check(index, ref_docs, queries, k, rtol=2e-5, **kw):
    ids, scores = index.search(queries, k=k, **kw)
    ref, full = brute(ref_docs, queries, k)
    for i, (rid, rsc) in enumerate(ref):
        n = len(rid)
        assert np.all(ids[i, n:] == -1) and np.all(ids[i, :n] >= 0), i
        assert len(set(ids[i, :n].tolist())) == n
        np.testing.assert_allclose(scores[i, :n], rsc, rtol=rtol, atol=1e-6)
        # the same documents up to float ties: each id's true score equals the reference at its rank
        np.testing.assert_allclose(full[i, ids[i, :n]], rsc, rtol=rtol, atol=1e-6)
        # exact ties keep the lower position first
        for a in range(n - 1):
            if full[i, ids[i, a]] == full[i, ids[i, a + 1]]:
                assert ids[i, a] < ids[i, a + 1]
    return ids, scores


def zipf_docs(rng, n, v, nnz, ties=False):
    """Zipf-ish term ids and lognormal weights (long head lists, as in learned sparse data)."""
    p = 1.0 / (np.arange(v) + 3.0)
    p /= p.sum()
    rows = np.repeat(np.arange(n), nnz)
    cols = rng.choice(v, size=rows.size, p=p)
    w = rng.lognormal(-0.7, 0.6, rows.size).astype(np.float32)
    if ties:
        w = np.round(w * 4) / 4 + 0.25
    m = sp.csr_matrix((w, (rows, cols)), shape=(n, v), dtype=np.float32)
    m.sum_duplicates()
    return m


@pytest.fixture(autouse=True)
def _maxscore_on_small_corpora(monkeypatch):
    """Exercise the pruned kernels on these tiny corpora (exact mode scans small ones by default)."""
    monkeypatch.setattr(InvertedIndex, "EXACT_SCAN_BELOW", 0)


def test_small_corpora_scan_gives_the_same_result(data, monkeypatch):
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=8)
    pruned = index.search(queries, k=10)
    monkeypatch.setattr(InvertedIndex, "EXACT_SCAN_BELOW", 10**9)
    scanned = index.search(queries, k=10)
    assert (pruned.ids == scanned.ids).all()
    np.testing.assert_allclose(pruned.scores, scanned.scores, rtol=1e-6)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    docs = zipf_docs(rng, 3000, 400, 30)
    queries = zipf_docs(rng, 60, 400, 12)
    return docs, queries


@pytest.mark.parametrize("quantize", [None, 8])
@pytest.mark.parametrize("k", [1, 10, 64])
@pytest.mark.parametrize("decoded", [True, False])
def test_exact_matches_brute_force(data, quantize, k, decoded):
    """Both execution modes: lists decoded in memory (with the derived forward copy and window
    maxima) and compressed blocks searched in place (block skipping, cursors)."""
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=quantize, decoded=decoded)
    assert index.postings.decoded == decoded
    ref = dequantised(docs) if quantize else docs
    ids, scores = check(index, ref, queries, k)
    # every exact path agrees: pruned, exhaustive, threaded
    for kw in (dict(mode="exhaustive"), dict(threads=2)):
        ids2, scores2 = index.search(queries, k=k, **kw)
        np.testing.assert_allclose(scores2, scores, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("quantize", [None, 8])
@pytest.mark.parametrize("decoded", [True, False])
def test_ties_duplicates_and_edge_cases(quantize, decoded):
    rng = np.random.default_rng(1)
    docs = zipf_docs(rng, 500, 60, 10, ties=True)
    docs = sp.vstack([docs, sp.csr_matrix((3, 60), dtype=np.float32)]).tocsr()  # docs with no terms
    index = InvertedIndex.from_csr(docs, quantize=quantize, decoded=decoded)
    ref = dequantised(docs) if quantize else docs
    rows = [([], []), ([2, 2, 5], [1.0, 0.5, 2.0]), ([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0]), ([59], [3.0]),
            ([7, 100], [1.0, 2.0])]  # duplicates, out-of-vocabulary term, empty query
    qb = SparseBatch.from_rows(rows, vocab_size=120)
    dedup = SparseBatch.from_rows([([2, 5], [1.5, 2.0]) if i == 1 else r for i, r in enumerate(rows)],
                                  vocab_size=120).to_scipy()[:, :60]
    dedup = sp.csr_matrix(dedup)
    for k in (1, 5, 600):  # k > corpus
        ids, scores = index.search(qb, k=k)
        ref_out, _ = brute(ref, dedup, k)
        for i, (rid, rsc) in enumerate(ref_out):
            assert ids[i, : len(rid)].tolist() == rid.tolist() or np.allclose(scores[i, : len(rid)], rsc, rtol=1e-5)
            np.testing.assert_allclose(scores[i, : len(rid)], rsc, rtol=2e-5)
            assert np.all(ids[i, len(rid):] == -1)
        assert np.all(ids[0] == -1)
        for mode in ("approximate", "exhaustive"):
            ids_m, _ = index.search(qb, k=k, mode=mode)
            assert np.all(ids_m[0] == -1)


def test_all_equal_weights_tie_to_lower_position():
    docs = sp.csr_matrix(np.ones((300, 5), dtype=np.float32))
    for quantize in (None, 8):
        index = InvertedIndex.from_csr(docs, quantize=quantize)
        q = sp.csr_matrix(np.array([[1, 1, 0, 0, 1]], dtype=np.float32))
        for mode in ("exact", "approximate", "exhaustive"):
            ids, scores = index.search(q, k=7, mode=mode)
            assert ids[0].tolist() == list(range(7)), (quantize, mode)
            np.testing.assert_allclose(scores[0], 3.0, rtol=1e-4)


def test_one_document_corpus_and_empty_corpus_rows():
    docs = sp.csr_matrix(np.array([[0.0, 1.5, 0.0]], dtype=np.float32))
    index = InvertedIndex.from_csr(docs, doc_ids=["only"], quantize=8)
    for mode in ("exact", "approximate", "exhaustive"):
        ids, scores = index.search(docs, k=4, mode=mode)
        assert ids[0].tolist() == [0]  # k capped at the corpus
        assert scores[0, 0] == pytest.approx(2.25, rel=1e-3)


def test_negative_query_weights_fall_back_to_exhaustive(data):
    docs, queries = data
    q = queries.copy()
    q.data = q.data * np.where(np.arange(q.nnz) % 3 == 0, -1.0, 1.0).astype(np.float32)
    index = InvertedIndex.from_csr(docs, quantize=8)
    check(index, dequantised(docs), q, 10)
    with pytest.raises(ValueError, match="positive"):
        InvertedIndex.from_csr(-docs, quantize=8)


def test_quantisation_codes():
    q = quantization_for(10.0)
    w = np.array([1e-9, 10.0, 5.0, 0.02], np.float32)
    c16 = fine_codes(w, q)
    assert c16.tolist()[:2] == [1, 65535]
    c8 = coarse_codes(c16)
    assert c8.tolist()[:2] == [1, 255]
    np.testing.assert_allclose(c8[2] * q["scale"], 5.0, rtol=1 / 255)


def test_approximate_recall_is_measured_and_knobs_work(data):
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=8, forward=True)
    ref, _ = brute(docs, queries, 10)  # float truth
    for kw, floor in [(dict(), 0.999), (dict(heap_factor=0.9, n_postings=400), 0.9),
                      (dict(query_cut=3, heap_factor=0.5), 0.0)]:
        ids, scores = index.search(queries, k=10, mode="approximate", **kw)
        rec = np.mean([len(set(ids[i]) & set(r[0])) / 10 for i, r in enumerate(ref)])
        assert rec >= floor, (kw, rec)
        # scores are the fine scores of the returned documents, sorted
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    with pytest.raises(ValueError, match="mode"):
        index.search(queries, mode="fast")
    with pytest.raises(ValueError, match="heap_factor"):
        index.search(queries, mode="approximate", heap_factor=-1)


def fine_dequantised(docs: sp.csr_matrix) -> sp.csr_matrix:
    """The 16-bit scores' document matrix (what approximate mode re-scores with)."""
    m = sp.csr_matrix(docs, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    q = quantization_for(float(m.data.max()))
    m.data = np.clip(np.rint(m.data.astype(np.float64) / q["fine_scale"]), 1, 65535) * q["fine_scale"]
    return m


@pytest.mark.parametrize("quantize", [None, 8])
@pytest.mark.parametrize("forward,decoded", [(True, True), (False, True), (False, False)])
def test_approximate_with_every_candidate_is_exact_on_rescoring_weights(data, quantize, forward, decoded):
    """Re-scoring uses the stored forward copy's fine weights when there is one, else the
    index's own weights (a forward copy derived in memory, or the compressed lists in place)."""
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=quantize, forward=forward, decoded=decoded)
    if quantize and forward:
        ref = fine_dequantised(docs)
    elif quantize:  # 8-bit impacts x scale, from the float weights independently of the index
        m = fine_dequantised(docs)
        q = quantization_for(float(docs.max()))
        m.data = np.maximum(1, np.floor((np.rint(m.data / q["fine_scale"]) + 128) / 257)) * q["scale"]
        ref = m
    else:
        ref = docs
    check(index, ref, queries, 10, rtol=1e-4, mode="approximate", candidates=docs.shape[0])


def test_approximate_knobs_trade_recall_for_work(data):
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=8)
    ref, _ = brute(docs, queries, 10)

    def recall(**kw):
        ids, _ = index.search(queries, k=10, mode="approximate", **kw)
        return np.mean([len(set(ids[i]) & set(r[0])) / 10 for i, r in enumerate(ref)])

    assert recall(query_cut=1, candidates=10) < recall(query_cut=4, candidates=50) <= 1.0
    assert recall(query_cut=4, candidates=50, heap_factor=0.9) <= recall(query_cut=4, candidates=50) + 1e-9
    # k > candidates: at least k candidates are re-scored; threads do not change results
    a = index.search(queries, k=20, mode="approximate", query_cut=3, n_postings=50, candidates=5)
    b = index.search(queries, k=20, mode="approximate", query_cut=3, n_postings=50, candidates=5, threads=2)
    assert (a.ids == b.ids).all() and (a.ids[:, :10] >= 0).all()
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="candidates"):
            index.search(queries, mode="approximate", candidates=bad)


@pytest.mark.parametrize("forward", [True, False])
def test_save_load_quantised(tmp_path, data, forward):
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=8, forward=forward)
    index.save(tmp_path / "ix")
    loaded = InvertedIndex.load(tmp_path / "ix")
    assert loaded.quantization == index.quantization
    for mode in ("exact", "approximate"):
        a, b = index.search(queries, k=10, mode=mode), loaded.search(queries, k=10, mode=mode)
        assert (a.ids == b.ids).all() and (a.scores == b.scores).all()


def test_concurrent_python_threads(data):
    docs, queries = data
    index = InvertedIndex.from_csr(docs, quantize=8)
    expected = index.search(queries, k=10)
    results = [None] * 4

    def work(i):
        results[i] = index.search(queries, k=10, threads=1 + i % 2)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for ids, scores in results:
        assert (ids == expected.ids).all() and (scores == expected.scores).all()
