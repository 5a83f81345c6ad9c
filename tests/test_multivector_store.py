"""MultiVectors storage and exact MaxSim against a naive numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from lsr.errors import IndexFormatError
from lsr.io.manifest import load_multivectors, save_multivectors
from lsr.index.maxsim import MultiVectors, maxsim_rerank, maxsim_scores, maxsim_search


def naive(q_sets, d_sets):
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
