"""DenseIndex (FAISS) against numpy brute force on deterministic synthetic data; round trips,
damaged directories and FAISS parameters that must be refused before FAISS sees them."""
from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from conftest_dense import edit_manifest, faiss_of, rehash, run_python  # noqa: E402

from lsr.errors import IndexFormatError  # noqa: E402
from lsr.index.dense import DenseIndex, faiss_gpu_available  # noqa: E402


def clustered(n, dim, seed=0, centers=20):
    """Normalised vectors around a few centres (like text embeddings, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(q, x, k):
    s = q @ x.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, 1)


@pytest.fixture(scope="module")
def data():
    x = clustered(3000, 48)
    q = clustered(60, 48, seed=1)
    return x, q


def test_flat_equals_brute_force(data):
    x, q = data
    idx = DenseIndex.build(x, doc_ids=[f"d{i}" for i in range(len(x))])
    ids, scores = idx.search(q, k=10, threads=2)
    ref_ids, ref_scores = brute(q, x, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (60, 10)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert np.mean(ids == ref_ids) > 0.99  # equal up to exact ties
    assert idx.doc_ids[ids[0, 0]] == f"d{ref_ids[0, 0]}"


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.98), ("ivf", 0.9), ("ivfpq", 0.5)])
def test_approximate_types_recall(data, kind, floor):
    x, q = data
    idx = DenseIndex.build(x, index_type=kind)
    ids, _ = idx.search(q, k=10)
    ref, _ = brute(q, x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])
    assert recall >= floor, (kind, recall)


def test_k_beyond_the_corpus_is_capped():
    x = np.eye(3, dtype=np.float32)
    res = DenseIndex.build(x, doc_ids=["a", "b", "c"]).search(np.array([[0, 1, 0.5]], np.float32), k=10**9)
    assert res.ids.tolist() == [[1, 2, 0]]
    assert res.scores.tolist() == [[1.0, 0.5, 0.0]]
    assert res.external_ids().tolist() == [["b", "c", "a"]]
    empty = DenseIndex.build(np.zeros((0, 3), np.float32))
    assert empty.search(np.ones((2, 3), np.float32), k=2).ids.shape == (2, 0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_roundtrip(data, tmp_path, kind):
    x, q = data
    idx = DenseIndex.build(x, doc_ids=[f"d{i}" for i in range(len(x))], index_type=kind)
    idx.save(tmp_path / "idx")
    again = DenseIndex.load(tmp_path / "idx")
    assert (again.index_type, again.params, len(again), again.dim) == (kind, idx.params, len(x), 48)
    a, b = idx.search(q, 10), again.search(q, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(again.doc_ids, idx.doc_ids)


def test_load_refuses_damaged_directory(data, tmp_path):
    DenseIndex.build(data[0][:50]).save(tmp_path / "idx")
    with open(tmp_path / "idx" / "faiss.index", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IndexFormatError, match="checksum"):
        DenseIndex.load(tmp_path / "idx")
    with pytest.raises(IndexFormatError):
        DenseIndex.load(tmp_path / "nothing")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_dense_round_trip_ids_threads_and_padding(tmp_path, kind):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1500, 24)).astype(np.float32)
    q = rng.normal(size=(20, 24)).astype(np.float32)
    ids = [f"doc/{i}-é" for i in range(1500)]
    index = DenseIndex.build(x, doc_ids=ids, index_type=kind)
    before = index.search(q, k=10)
    index.save(tmp_path / "i")
    for mmap in (True, False):
        for verify in (True, False):
            again = DenseIndex.load(tmp_path / "i", mmap=mmap, verify=verify)
            assert again.doc_ids.tolist() == ids and again.params == index.params
            for threads in (1, 2):
                after = again.search(q, k=10, threads=threads)
                np.testing.assert_array_equal(after.ids, before.ids)
                np.testing.assert_array_equal(after.scores, before.scores)
    if kind == "flat":
        s = q @ x.T
        np.testing.assert_allclose(before.scores, -np.sort(-s, axis=1)[:, :10], rtol=1e-5, atol=1e-5)
    small = DenseIndex.build(x[:40], doc_ids=ids[:40], index_type=kind)
    got, scores = small.search(q, k=64)  # k beyond the 40 vectors: capped at 40, not allocated
    assert got.shape == (20, 40) and (kind != "flat" or np.all(got >= 0))
    assert all(sorted(row[:40].tolist()) == list(range(40)) for row in got)


@pytest.mark.parametrize("edit", ["flat->hnsw", "hnsw->flat", "ivf nprobe missing", "ivf nprobe -1",
                                  "hnsw ef_search 0", "L2 file"])
def test_damaged_dense_manifest_is_refused(tmp_path, edit):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    kind = edit.split()[0].split("-")[0] if "L2" not in edit else "flat"
    path = tmp_path / "dense"
    DenseIndex.build(x, index_type=kind).save(path)
    if "->" in edit:
        edit_manifest(path, lambda m: m.update(index_type=edit.split("->")[1]))
    elif "missing" in edit:
        edit_manifest(path, lambda m: m["params"].pop("nprobe"))
    elif "L2" in edit:
        faiss.write_index(faiss_of("l2", 8, 200), str(path / "faiss.index"))
        rehash(path, "faiss.index")
    else:
        key, value = edit.split()[1:]
        edit_manifest(path, lambda m: m["params"].update({key: int(value)}))
    with pytest.raises(IndexFormatError, match=r"manifest\.json|faiss\.index"):
        DenseIndex.load(path)


def test_bad_input():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="index_type"):
        DenseIndex.build(x, index_type="lsh")
    with pytest.raises(ValueError, match="duplicate"):
        DenseIndex.build(x, doc_ids=["a", "a", "b", "c"])
    with pytest.raises(ValueError, match="unknown index parameters"):
        DenseIndex.build(x, efsearch=3)
    idx = DenseIndex.build(x)
    with pytest.raises(ValueError, match="shape"):
        idx.search(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="k must"):
        idx.search(np.ones((1, 3), np.float32), k=0)


def test_bad_faiss_parameters_are_refused_not_crashing():
    # hnsw_m 0 aborted the process in FAISS, 1 segfaulted, -1 hung; pq_bits 0 segfaulted
    res = run_python("""
        import numpy as np
        from lsr.index.dense import DenseIndex
        x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
        for kind, key, val in [("hnsw", "hnsw_m", 0), ("hnsw", "hnsw_m", 1), ("hnsw", "hnsw_m", -1),
                               ("hnsw", "hnsw_m", True), ("hnsw", "ef_search", 0), ("hnsw", "ef_construction", -5),
                               ("ivf", "nlist", -1), ("ivf", "nprobe", -1), ("ivfpq", "pq_bits", 0),
                               ("ivfpq", "pq_m", -2), ("hnsw", "hnsw_m", 2.5)]:
            try:
                DenseIndex.build(x, index_type=kind, **{key: val})
                print("accepted", key, val)
            except ValueError as exc:
                assert key in str(exc), exc
                print("refused")
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["refused"] * 11, res.stdout


def test_gpu_request_without_gpu_fails_clearly():
    if faiss_gpu_available():
        pytest.skip("checks the error raised without a GPU; this machine has a FAISS GPU")
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        DenseIndex.build(np.ones((4, 3), np.float32), use_gpu=True)


@pytest.mark.gpu
def test_gpu_matches_cpu(data):
    if not faiss_gpu_available():
        pytest.skip("needs a FAISS GPU build and a GPU")
    x, q = data
    cpu = DenseIndex.build(x, use_gpu=False)
    gpu = DenseIndex.build(x, use_gpu=True)
    assert gpu.on_gpu and not cpu.on_gpu
    np.testing.assert_allclose(gpu.search(q, 10).scores, cpu.search(q, 10).scores, atol=1e-4)
