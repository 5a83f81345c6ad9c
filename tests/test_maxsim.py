"""Exact MaxSim (lsr/index/maxsim.py) and MultiVectors storage against a naive float64 reference:
scores, search, re-ranking, tie order and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from conftest_dense import random_sets, ranked

from lsr.errors import IndexFormatError
from lsr.io.manifest import load_multivectors, save_multivectors
from lsr.index.maxsim import MultiVectors, maxsim_rerank, maxsim_scores, maxsim_search


def naive(q_sets, d_sets):
    """float64 MaxSim pair by pair; documents without vectors score -inf, queries without vectors 0."""
    out = np.zeros((len(q_sets), len(d_sets)))
    for i, q in enumerate(q_sets):
        for j, d in enumerate(d_sets):
            out[i, j] = (q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() if len(d) else -np.inf
    return out


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    docs = [rng.normal(size=(int(rng.integers(0, 9)), 6)).astype(np.float16) for _ in range(40)]
    queries = [rng.normal(size=(int(rng.integers(1, 5)), 6)).astype(np.float32) for _ in range(7)]
    return docs, queries


def test_maxsim_scores_match_naive_across_block_sizes(sets):
    docs, queries = sets
    d, q = MultiVectors.from_list(docs, dtype=np.float16), MultiVectors.from_list(queries)
    ref = naive(queries, docs)
    for block in (1, 7, 50, 10_000):
        got = maxsim_scores(q, d, block_tokens=block)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_search_and_rerank_agree_with_naive(sets, dtype):
    docs, queries = sets
    d, q = MultiVectors.from_list(docs, dtype=dtype), MultiVectors.from_list(queries)
    ref = naive(queries, docs)
    ids, scores = maxsim_search(q, d, k=50)  # k above the corpus size: capped at 40, empty documents pad
    n_nonempty = sum(len(x) > 0 for x in docs)
    assert ids.shape == (7, 40) and np.all(ids[:, n_nonempty:] == -1) and np.all(ids[:, :n_nonempty] >= 0)
    for i in range(7):
        order = sorted(range(40), key=lambda j: (-ref[i, j], j))[:n_nonempty]
        np.testing.assert_allclose(scores[i, :n_nonempty], ref[i, order], rtol=1e-5)
    cand = np.argsort(-ref, axis=1)[:, :12]
    cand[:, -1] = -1
    cand[:, -2] = cand[:, 0]  # a duplicate counts once
    for threads in (1, 2):
        r_ids, r_scores = maxsim_rerank(q, d, cand, k=5, threads=threads)
        for i in range(7):
            c = [j for j in dict.fromkeys(cand[i]) if j >= 0 and len(docs[j])]
            best = sorted(c, key=lambda j: (-ref[i, j], j))[:5]
            np.testing.assert_allclose(r_scores[i, :len(best)], ref[i, best], rtol=1e-5)
            assert r_ids[i, :len(best)].tolist() == best


def test_store_roundtrip_is_float16_mmap(sets, tmp_path):
    docs, _ = sets
    mv = MultiVectors.from_list(docs, dtype=np.float32)
    fields = save_multivectors(tmp_path, mv)
    again = load_multivectors(tmp_path, fields)
    assert again.vectors.dtype == np.float16 and isinstance(again.vectors, np.memmap)
    np.testing.assert_array_equal(again.offsets, mv.offsets)
    np.testing.assert_array_equal(again[3], mv[3].astype(np.float16))
    with pytest.raises(IndexFormatError):
        load_multivectors(tmp_path, {**fields, "total_vectors": fields["total_vectors"] + 1})


def test_validation():
    with pytest.raises(ValueError, match="offsets"):
        MultiVectors(np.zeros((3, 2), np.float32), np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="dimension"):
        maxsim_scores(MultiVectors.from_list([np.ones((1, 3), np.float32)]),
                      MultiVectors.from_list([np.ones((1, 2), np.float32)]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_rerank_groups_of_many_queries_match_naive(dtype):
    # every query re-ranks every document: large per-document groups, query lengths 1..9 (not
    # multiples of the kernel's 4 x 4 tiles), document lengths 1..13 and one empty document
    rng = np.random.default_rng(5)
    docs = [rng.normal(size=(int(rng.integers(1, 14)), 12)).astype(dtype) for _ in range(25)] + [
        np.zeros((0, 12), dtype)]
    queries = [rng.normal(size=(int(rng.integers(1, 10)), 12)).astype(np.float32) for _ in range(30)]
    d, q = MultiVectors.from_list(docs, dtype=dtype), MultiVectors.from_list(queries)
    ref = naive(queries, docs)
    cand = np.tile(np.arange(len(docs)), (len(queries), 1))
    for threads in (1, 2):
        ids, scores = maxsim_rerank(q, d, cand, k=len(docs), threads=threads)
        for i in range(len(queries)):
            best = sorted(range(25), key=lambda j: (-ref[i, j], j))
            assert ids[i, :25].tolist() == best and ids[i, 25] == -1
            np.testing.assert_allclose(scores[i, :25], ref[i, best], rtol=1e-5, atol=1e-5)


def test_maxsim_scores_with_small_query_groups_and_blocks(sets, monkeypatch):
    import lsr.index.maxsim as mv

    docs, queries = sets
    d, q = MultiVectors.from_list(docs, dtype=np.float16), MultiVectors.from_list(queries)
    monkeypatch.setattr(mv, "QUERY_TOKENS", 3)  # several query groups
    monkeypatch.setattr(mv, "SIMS_FLOATS", 10)  # blocks of a document or two
    np.testing.assert_allclose(maxsim_scores(q, d), naive(queries, docs), rtol=1e-5, atol=1e-5)


def test_float16_widening_is_exact_for_every_bit_pattern():
    """The kernels widen float16 stores by integer arithmetic; NumPy's cast is the reference
    (zeros of both signs, subnormals, normals, infinities and NaNs)."""
    from lsr.index._maxsim_kernels import _widen_f16

    bits = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = np.full(bits.shape, 7.0, np.float32)
    _widen_f16(bits, out)
    ref = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def test_top_k_matches_a_sort_of_the_finite_entries():
    """Heavy ties, NaN and infinities: the k best finite scores, ties to the lower position."""
    from lsr.index.maxsim import _top_k

    rng = np.random.default_rng(3)
    for _ in range(100):
        nq, n, k = int(rng.integers(1, 8)), int(rng.integers(1, 120)), int(rng.integers(1, 130))
        scores = rng.integers(-4, 4, (nq, n)).astype(np.float32)
        for value, share in ((-np.inf, 0.1), (np.nan, 0.05), (np.inf, 0.02)):
            scores[rng.random(scores.shape) < share] = value
        ids, top = _top_k(scores, k)
        for i in range(nq):
            finite = np.flatnonzero(np.isfinite(scores[i]))
            expect = finite[np.lexsort((finite, -scores[i, finite]))][:k]
            np.testing.assert_array_equal(ids[i], np.pad(expect, (0, k - expect.size), constant_values=-1))
            np.testing.assert_array_equal(top[i], np.pad(scores[i, expect], (0, k - expect.size)))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_maxsim_search_and_rerank_match_loop_reference(dtype):
    rng = np.random.default_rng(11)
    docs = random_sets(rng, 45, 10, 9, dtype)
    docs[3] = np.zeros((0, 10), dtype)  # documents without vectors
    docs[44] = np.zeros((0, 10), dtype)
    queries = random_sets(rng, 9, 10, 6, np.float32, min_len=1)
    queries[2] = queries[2][:1]  # a one-vector query
    queries[5] = np.zeros((0, 10), np.float32)  # a query without vectors: 0 for every document
    d, q = MultiVectors.from_list(docs, dtype=dtype), MultiVectors.from_list(queries)
    ref = naive(queries, docs)
    np.testing.assert_allclose(maxsim_scores(q, d), ref, rtol=1e-4, atol=1e-4)
    for k in (1, 6, 43, 80):  # 43 non-empty documents of 45; k capped at 45, then padded
        ids, scores = maxsim_search(q, d, k=k)
        assert ids.shape == scores.shape == (9, min(k, 45)) and ids.dtype == np.int64 and scores.dtype == np.float32
        for i in range(9):
            want = ranked(ref[i], range(45), k)
            assert ids[i, :len(want)].tolist() == want, (k, i)
            np.testing.assert_allclose(scores[i, :len(want)], ref[i, want], rtol=1e-4, atol=1e-4)
            assert np.all(ids[i, len(want):] == -1) and np.all(scores[i, len(want):] == 0)
    cand = rng.integers(-1, 45, size=(9, 30))
    cand[:, 0] = 3  # an empty document among the candidates
    cand[:, 1] = cand[:, 2]  # duplicates
    cand[4] = -1  # nothing to re-rank
    for threads in (1, 2):
        for k in (1, 7, 40):
            ids, scores = maxsim_rerank(q, d, cand, k=k, threads=threads)
            for i in range(9):
                want = ranked(ref[i], cand[i], k)
                assert ids[i, :len(want)].tolist() == want, (threads, k, i)
                np.testing.assert_allclose(scores[i, :len(want)], ref[i, want], rtol=1e-4, atol=1e-4)
                assert np.all(ids[i, len(want):] == -1) and np.all(scores[i, len(want):] == 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_maxsim_ties_go_to_the_lower_position(dtype):
    # three distinct documents repeated; small integer vectors make every score exact, so equal
    # documents tie exactly whatever the summation order
    rng = np.random.default_rng(3)
    base = [rng.integers(-2, 3, size=(int(rng.integers(1, 4)), 8)).astype(dtype) for _ in range(3)]
    docs = [base[i % 3] for i in range(90)]
    queries = [rng.integers(-2, 3, size=(int(rng.integers(1, 4)), 8)).astype(np.float32) for _ in range(6)]
    d, q = MultiVectors.from_list(docs, dtype=dtype), MultiVectors.from_list(queries)
    ref = naive(queries, docs)
    cand = np.tile(np.arange(90)[::-1], (6, 1))
    for k in (1, 4, 31, 46, 89, 90):
        ids, _ = maxsim_search(q, d, k=k)
        r_ids, _ = maxsim_rerank(q, d, cand, k=k, threads=2)
        for i in range(6):
            want = ranked(ref[i], range(90), k)
            assert ids[i].tolist() == want, (k, i)
            assert r_ids[i].tolist() == want, (k, i)


def test_rerank_refuses_candidates_below_minus_one():
    docs = MultiVectors.from_list([np.ones((1, 4), np.float32)] * 3)
    q = MultiVectors.from_list([np.ones((1, 4), np.float32)])
    with pytest.raises(ValueError, match="candidate"):
        maxsim_rerank(q, docs, np.array([[0, -100]]), k=2)


def test_rerank_refuses_float_candidates():
    rng = np.random.default_rng(6)
    docs = MultiVectors.from_list(random_sets(rng, 5, 4, 3, np.float32, min_len=1))
    queries = MultiVectors.from_list(random_sets(rng, 2, 4, 2, np.float32, min_len=1))
    with pytest.raises(TypeError, match="integer positions"):
        maxsim_rerank(queries, docs, np.array([[0.0, 1.7], [2.0, 3.0]]), k=1)
    ids, _ = maxsim_rerank(queries, docs, np.array([[0, 1], [2, 3]], dtype=np.int32), k=1)
    assert ids.shape == (2, 1)
