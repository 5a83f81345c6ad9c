"""FDEIndex: FAISS over FDEs + exact MaxSim re-ranking, checked against brute-force MaxSim."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from lsr.errors import IndexFormatError  # noqa: E402
from lsr.index.maxsim import MultiVectors, maxsim_search  # noqa: E402
from lsr.index.muvera import FDEConfig, FDEIndex  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))
    def sample(n):
        x = centers[rng.integers(0, 10, n)] + 0.7 * rng.normal(size=(n, 16))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    docs = MultiVectors.from_list([sample(int(rng.integers(3, 12))) for _ in range(120)], dtype=np.float16)
    queries = MultiVectors.from_list([sample(4) for _ in range(15)])
    return docs, queries, [f"doc{i}" for i in range(120)]


def test_all_candidates_equals_exact_maxsim(corpus):
    docs, queries, ids = corpus
    index = FDEIndex.build(docs, FDEConfig(dim=16, k_sim=3, d_proj=8, reps=4), doc_ids=ids, candidates=120)
    got_ids, got_scores = index.search(queries, k=10)
    ref_ids, ref_scores = maxsim_search(queries, docs, k=10)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5)
    assert index.doc_ids[got_ids[0, 0]] == ids[ref_ids[0, 0]]


def test_fde_candidates_recall(corpus):
    docs, queries, ids = corpus
    index = FDEIndex.build(docs, FDEConfig(dim=16, k_sim=3, d_proj=None, reps=20), doc_ids=ids, candidates=30)
    cand, _ = index.search_fde(queries, 30)
    ref, _ = maxsim_search(queries, docs, k=5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(cand, ref)])
    assert recall > 0.8  # a sanity floor on synthetic data (measured: 0.87)
    got, _ = index.search(queries, k=5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, ref)]) >= recall - 1e-9


def test_save_load_records_parameters(corpus, tmp_path):
    docs, queries, ids = corpus
    config = FDEConfig(dim=16, k_sim=2, d_proj=4, reps=3, final_dim=20, seed=7)
    index = FDEIndex.build(docs, config, doc_ids=ids, candidates=25)
    index.save(tmp_path / "fde")
    import json

    manifest = json.loads((tmp_path / "fde" / "manifest.json").read_text())
    assert manifest["fde"] == {**config.to_dict()} and manifest["candidates"] == 25
    again = FDEIndex.load(tmp_path / "fde")
    assert again.encoder.config == config and again.docs.vectors.dtype == np.float16
    np.testing.assert_array_equal(again.search(queries, 10).ids, index.search(queries, 10).ids)
    (tmp_path / "fde" / "multivectors_offsets.npy").write_bytes(b"broken")
    with pytest.raises(IndexFormatError):
        FDEIndex.load(tmp_path / "fde")


def test_empty_documents_and_padding():
    docs = MultiVectors.from_list([np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32)])
    index = FDEIndex.build(docs, FDEConfig(dim=4, k_sim=1, d_proj=None, reps=1))
    ids, scores = index.search(MultiVectors.from_list([np.ones((1, 4), np.float32)]), k=3)
    assert ids.tolist() == [[0, -1]]  # k capped at the 2 documents; the one without vectors pads
    assert scores[0, 0] == pytest.approx(4.0)


def test_flat_fde_search_matches_faiss(corpus):
    docs, queries, ids = corpus
    index = FDEIndex.build(docs, FDEConfig(dim=16, k_sim=3, d_proj=8, reps=4), doc_ids=ids)
    ref_ids, ref_scores = index.dense.search(index.encoder.encode_queries(queries), k=20)
    got_ids, got_scores = index.search_fde(queries, 20)  # one float32 product: FAISS's ranking
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert np.mean(got_ids == ref_ids) > 0.99
