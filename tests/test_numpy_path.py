"""The numpy path for small indexes (lsr.index._numpy_path) against the compiled kernels: the
same tables and decoded lists on load, the same verdict on damaged files, the same search
results bit for bit; and a fresh process that opens a small index imports no Numba."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import IndexFormatError, InvertedIndex
from lsr.index import _codec_kernels, _numpy_path


def random_docs(rng, n, v, density, signed=False):
    m = sp.random(n, v, density=density, format="csr", dtype=np.float32, random_state=rng)
    m.data = (rng.random(m.data.size) - (0.5 if signed else -0.01)).astype(np.float32)
    if m.data.size:  # ties
        m.data[rng.random(m.data.size) < 0.2] = m.data[0]
    return m


def load(path, compiled, **kwargs):
    """Open ``path`` with the compiled kernels or with numpy."""
    saved = InvertedIndex.NUMPY_LOAD_POSTINGS
    InvertedIndex.NUMPY_LOAD_POSTINGS = -1 if compiled else 1 << 62
    try:
        return InvertedIndex.load(path, **kwargs)
    finally:
        InvertedIndex.NUMPY_LOAD_POSTINGS = saved


def load_outcome(path, compiled):
    """The loaded arrays, or the error message."""
    try:
        index = load(path, compiled, verify=False)
    except IndexFormatError as exc:
        return str(exc)
    p = index.postings
    return [p.term_blocks, p.block_last, p.block_max, p.block_word, p.raw_docs, p.raw_imps, index.term_max]


def assert_same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


def test_block_size_agrees():
    assert _numpy_path.BLOCK == _codec_kernels.BLOCK


@pytest.mark.parametrize("quantize", [None, 8])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_load_matches_kernels(tmp_path, seed, quantize):
    rng = np.random.default_rng(seed)
    # long lists (several blocks, exceptions) and short ones; seed 3: mostly empty lists
    docs = random_docs(rng, int(rng.integers(1, 1500)), 200, 0.002 if seed == 3 else 0.1)
    InvertedIndex.from_csr(docs, quantize=quantize).save(tmp_path / "i")
    a, b = load_outcome(tmp_path / "i", True), load_outcome(tmp_path / "i", False)
    assert not isinstance(a, str)
    assert_same(a, b)
    assert load(tmp_path / "i", False, decoded=False).postings.raw_docs.size == 0


@pytest.mark.parametrize("quantize", [None, 8])
def test_empty_index(tmp_path, quantize):
    InvertedIndex.from_csr(sp.csr_matrix((4, 6), dtype=np.float32), quantize=quantize).save(tmp_path / "i")
    assert_same(load_outcome(tmp_path / "i", True), load_outcome(tmp_path / "i", False))


@pytest.mark.parametrize("quantize", [None, 8])
def test_damaged_words_same_verdict(tmp_path, quantize):
    """Flipped bits anywhere in the stream: refused by both with the same block number, or
    accepted by both with the same tables (a flipped low bit can still decode validly)."""
    rng = np.random.default_rng(7)
    docs = random_docs(rng, 600, 80, 0.2)
    InvertedIndex.from_csr(docs, quantize=quantize).save(tmp_path / "i")
    words_file = tmp_path / "i" / "words.npy"
    clean = words_file.read_bytes()
    header = len(clean) - np.load(words_file).nbytes
    refused = 0
    for _ in range(60):
        data = bytearray(clean)
        at = header + int(rng.integers(0, len(clean) - header - 8))
        data[at] ^= 1 << int(rng.integers(0, 8))
        words_file.write_bytes(bytes(data))
        a, b = load_outcome(tmp_path / "i", True), load_outcome(tmp_path / "i", False)
        assert_same(a, b)
        refused += isinstance(a, str)
    assert refused > 0  # some flips must hit a checked field


def test_wrong_document_count_same_verdict(tmp_path):
    rng = np.random.default_rng(3)
    InvertedIndex.from_csr(random_docs(rng, 300, 50, 0.1)).save(tmp_path / "i")
    codes = _numpy_path.derive, _codec_kernels.derive
    i = load(tmp_path / "i", True)
    for n_docs in (1, 150, 299, 300):
        got = [f(i.offsets, i.postings.words, False, n_docs)[4] for f in codes]
        assert got[0] == got[1] and (got[0] >= 0) == (n_docs < 300)


def test_damaged_forward_same_verdict(tmp_path):
    rng = np.random.default_rng(5)
    InvertedIndex.from_csr(random_docs(rng, 200, 40, 0.2), quantize=8, forward=True).save(tmp_path / "i")
    terms_file = tmp_path / "i" / "forward_terms.npy"
    clean = np.load(terms_file)
    for trial in range(20):
        terms = clean.copy()
        terms[int(rng.integers(0, terms.size))] = rng.integers(0, 45)
        np.save(terms_file, terms)
        a, b = load_outcome(tmp_path / "i", True), load_outcome(tmp_path / "i", False)
        assert_same(a, b)


def reference_scan(index, queries, k):
    """Dense float32 sums term by term in query order (the order the kernels add in), matches
    by score > 0 when every weight is positive, else every document a query term reaches."""
    offsets, docs, w = index.decode()
    dense = np.zeros((index.n_docs, index.vocab_size), np.float32)
    dense[docs, np.repeat(np.arange(index.vocab_size), np.diff(offsets))] = w
    ids = np.full((queries.shape[0], k), -1, np.int64)
    scores = np.zeros((queries.shape[0], k), np.float32)
    for i in range(queries.shape[0]):
        row = slice(queries.indptr[i], queries.indptr[i + 1])
        acc = np.zeros(index.n_docs, np.float32)
        reached = np.zeros(index.n_docs, bool)
        positive = index.positive
        for t, qw in zip(queries.indices[row], queries.data[row]):
            if 0 <= t < index.vocab_size and qw != 0:
                acc += np.float32(qw) * dense[:, t]
                reached |= dense[:, t] != 0
                positive &= bool(qw > 0)
        cand = np.flatnonzero(acc > 0 if positive else reached)
        top = cand[np.lexsort((cand, -acc[cand]))][:k]
        ids[i, :top.size], scores[i, :top.size] = top, acc[top]
    if index.quantization:
        scores[ids >= 0] *= np.float32(index.quantization["scale"])
    return ids, scores


@pytest.mark.parametrize("quantize,signed", [(None, False), (8, False), (None, True)])
def test_exhaustive_search_matches_kernel(quantize, signed):
    """Bit for bit, as the kernel: empty queries, k beyond the corpus, out-of-vocabulary and
    negative query terms, ties."""
    rng = np.random.default_rng(11)
    docs = random_docs(rng, 250, 60, 0.1, signed=signed)
    index = InvertedIndex.from_csr(docs, quantize=quantize)
    queries = sp.random(12, 64, density=0.15, format="csr", dtype=np.float32, random_state=rng)
    queries.data = rng.choice([1.0, 2.0, 0.5, -1.0], queries.data.size).astype(np.float32)
    queries = sp.vstack([queries, sp.csr_matrix((1, 64), dtype=np.float32)]).tocsr()  # an empty query
    indptr = queries.indptr.astype(np.int64)
    indices, data = queries.indices.astype(np.int32), queries.data.astype(np.float32)
    p = index.postings
    for k in (1, 7, 400):
        ids = np.empty((queries.shape[0], k), np.int64)
        scores = np.empty((queries.shape[0], k), np.float32)
        _numpy_path.exhaustive_search(indptr, indices, data, p.offsets, p.raw_docs,
                                      p.raw_imps if p.quantized else p.weights, index.n_docs, index.positive, k,
                                      ids, scores)
        if quantize:
            scores[ids >= 0] *= np.float32(index.quantization["scale"])
        ref_ids, ref_scores = reference_scan(index, queries, k)
        kernel_ids, kernel_scores = (np.asarray(a) for a in index.search(queries, k=k, mode="exhaustive"))
        width = kernel_ids.shape[1]  # search may return fewer columns than k (at most one per document)
        assert (ref_ids[:, width:] == -1).all()
        for got_ids, got_scores in ((ids, scores), (kernel_ids, kernel_scores)):
            assert np.array_equal(got_ids[:, :width], ref_ids[:, :width])
            assert np.array_equal(got_scores[:, :width].view(np.int32), ref_scores[:, :width].view(np.int32))
        assert np.array_equal(ids, ref_ids) and np.array_equal(scores.view(np.int32), ref_scores.view(np.int32))


def test_opening_a_small_bm25_retriever_imports_no_numba(tmp_path):
    from lsr.retrievers.sparse import BM25Retriever

    r = BM25Retriever()
    r.index(["d1", "d2", "d3"], ["heart disease risk", "stock market news", "heart attack"])
    r.save(tmp_path / "r")
    code = ("import sys; from lsr.retrievers.base import load_retriever; r = load_retriever(sys.argv[1]); "
            "r.encoder.encode_queries(['heart']); "
            "print(sorted(m for m in ('numba', 'scipy', 'pandas', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_search_dispatch_moves_to_the_kernel_once_the_numpy_budget_is_spent(monkeypatch):
    """Small exhaustive searches run in numpy until NUMPY_WORK_BUDGET (queries x documents, per
    process) is spent, then in the compiled kernel; every call's results are identical."""
    import scipy.sparse as sp

    from lsr.index import inverted

    rng = np.random.default_rng(4)
    docs = sp.random(300, 200, density=0.05, random_state=rng, format="csr", dtype=np.float32)
    queries = sp.random(5, 200, density=0.1, random_state=rng, format="csr", dtype=np.float32)
    index = InvertedIndex.from_csr(docs)
    monkeypatch.setattr(inverted, "_NUMPY_WORK", [0])
    monkeypatch.setattr(InvertedIndex, "NUMPY_WORK_BUDGET", 3 * 5 * 300)
    calls = []
    real = _numpy_path.exhaustive_search
    monkeypatch.setattr(_numpy_path, "exhaustive_search", lambda *a: calls.append(1) or real(*a))
    results = [index.search(queries, k=7) for _ in range(5)]
    assert len(calls) == 3  # the budget covers three calls of 5 x 300; the rest ran compiled
    for r in results[1:]:
        np.testing.assert_array_equal(r.ids, results[0].ids)
        np.testing.assert_array_equal(r.scores, results[0].scores)
