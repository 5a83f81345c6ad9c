"""FDEIndex: FAISS over FDEs + exact MaxSim re-ranking, checked against brute-force MaxSim; tie
order, bad and empty input, damaged directories and interrupted saves."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from conftest_dense import edit_manifest, faiss_of, random_sets, ranked, rehash, run_python  # noqa: E402

from lsr.errors import IndexFormatError  # noqa: E402
from lsr.index.dense import DenseIndex  # noqa: E402
from lsr.index.maxsim import MultiVectors, maxsim_rerank, maxsim_search  # noqa: E402
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


def test_flat_fde_candidates_ties_go_to_the_lower_position():
    # one-vector documents, k_sim 0 and identity projection: a document's FDE is its vector and
    # a query's the sum of its vectors, so small integers give exact, tied FDE scores
    rng = np.random.default_rng(4)
    base = rng.integers(-2, 3, size=(4, 6)).astype(np.float32)
    docs = MultiVectors.from_list([base[i % 4][None] for i in range(60)])
    queries = MultiVectors.from_list([rng.integers(-2, 3, size=(2, 6)).astype(np.float32) for _ in range(5)])
    index = FDEIndex.build(docs, FDEConfig(dim=6, k_sim=0, d_proj=None, reps=1))
    ref = (queries.vectors.reshape(5, 2, 6).sum(1) @ base.T)[:, np.arange(60) % 4]
    for k in (1, 9, 16, 33):
        ids, _ = index.search_fde(queries, k)
        for i in range(5):
            assert ids[i].tolist() == ranked(ref[i], range(60), k), (k, i)


def test_fde_index_checks_candidates_and_doc_ids():
    rng = np.random.default_rng(5)
    docs = MultiVectors.from_list(random_sets(rng, 12, 8, 5, np.float32, min_len=1))
    queries = MultiVectors.from_list(random_sets(rng, 3, 8, 4, np.float32, min_len=1))
    index = FDEIndex.build(docs, FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2), candidates=4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="candidates"):
            index.search(queries, k=2, candidates=bad)
    # every document as a candidate = the exact top-k
    ids, _ = index.search(queries, k=3, candidates=12)
    np.testing.assert_array_equal(ids, maxsim_search(queries, index.docs, k=3).ids)
    with pytest.raises(ValueError, match="doc_ids"):
        FDEIndex(index.encoder, index.dense, index.docs, doc_ids=["a", "b"])
    with pytest.raises(ValueError, match="candidates"):
        FDEIndex(index.encoder, index.dense, index.docs, candidates=0)


# ---------------------------------------------------------------------------- bad and empty input
@pytest.mark.filterwarnings("error")  # refused up front, not after NaN arithmetic
def test_non_finite_queries_are_refused():
    rng = np.random.default_rng(0)
    docs = MultiVectors.from_list(random_sets(rng, 20, 8, 4, np.float32, min_len=1), dtype=np.float16)
    index = FDEIndex.build(docs, FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2))
    for bad in (np.nan, np.inf):
        q = MultiVectors.from_list([np.ones((2, 8), np.float32), np.full((2, 8), bad, np.float32)])
        with pytest.raises(ValueError, match="finite"):
            maxsim_search(q, docs, k=3)
        with pytest.raises(ValueError, match="finite"):
            maxsim_rerank(q, docs, np.array([[0, 1], [0, 1]]), k=3)
        with pytest.raises(ValueError, match="finite"):
            index.search(q, k=3)
        with pytest.raises(ValueError, match="finite"):
            index.dense.search(np.full((1, index.dense.dim), bad, np.float32), k=3)


def test_empty_query_lists_and_empty_corpus():
    rng = np.random.default_rng(1)
    docs = MultiVectors.from_list(random_sets(rng, 10, 8, 4, np.float32, min_len=1))
    index = FDEIndex.build(docs, FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2))
    none = MultiVectors.from_list([], dim=8)
    for ids, scores in (index.search(none, k=4), maxsim_search(none, docs, k=4),
                        index.dense.search(np.zeros((0, index.dense.dim), np.float32), k=4)):
        assert ids.shape == scores.shape == (0, 4)
    q = MultiVectors.from_list([np.ones((2, 8), np.float32)])
    empty = FDEIndex.build(MultiVectors.from_list([], dim=8), FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2))
    assert empty.search(q, k=3).ids.shape == (1, 0)  # k capped at the empty corpus
    assert maxsim_search(q, none, k=2).ids.shape == (1, 0)


# ---------------------------------------------------------------------------- damaged directories
def _replace_faiss(root: Path, index) -> None:
    import faiss

    faiss.write_index(index, str(root / "fde" / "faiss.index"))
    rehash(root, "faiss.index", "fde/manifest.json")  # both manifests agree: only the content is wrong
    rehash(root, "fde/faiss.index")


DAMAGE = {  # name: (edit of a saved FDE index, file the error must name)
    "no manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json"),
    "foreign format": (lambda p: edit_manifest(p, lambda m: m.update(format="lsr.dense")), "lsr.dense"),
    "offsets decrease": (lambda p: _save_offsets(p, lambda o: o[[0, 2, 1, *range(3, o.size)]]),
                         "multivectors_offsets.npy"),
    "offsets beyond the vectors": (lambda p: _save_offsets(p, lambda o: np.where(o > 0, o + 1000, o)),
                                   "multivectors_offsets.npy"),
    "vectors truncated": (lambda p: _truncate(p, "multivectors.npy"), "multivectors.npy"),
    "doc ids one short": (lambda p: _short_ids(p), "doc_ids.parquet"),
    "fde reps edited": (lambda p: edit_manifest(p, lambda m: m["fde"].update(reps=3)), "/fde:"),
    "fde seed not a number": (lambda p: edit_manifest(p, lambda m: m["fde"].update(seed="x")), "manifest.json"),
    "fde seed negative": (lambda p: edit_manifest(p, lambda m: m["fde"].update(seed=-5)), "manifest.json"),
    "candidates zero": (lambda p: edit_manifest(p, lambda m: m.update(candidates=0)), "manifest.json"),
    "candidates not a number": (lambda p: edit_manifest(p, lambda m: m.update(candidates="many")), "manifest.json"),
    "inner type says hnsw": (lambda p: edit_manifest(p, lambda m: m.update(index_type="hnsw"), "fde/manifest.json"),
                             "faiss.index"),
    "inner type says ivf": (lambda p: edit_manifest(p, lambda m: m.update(index_type="ivf"), "fde/manifest.json"),
                            "faiss.index"),
    "faiss file is hnsw": (lambda p: _replace_faiss(p, faiss_of("hnsw", 32, 30)), "faiss.index"),
    "faiss file is ivf": (lambda p: _replace_faiss(p, faiss_of("ivf", 32, 30)), "faiss.index"),
    "faiss file is L2": (lambda p: _replace_faiss(p, faiss_of("l2", 32, 30)), "faiss.index"),
}


def _save_offsets(p: Path, fn) -> None:
    np.save(p / "multivectors_offsets.npy", fn(np.load(p / "multivectors_offsets.npy")))
    rehash(p, "multivectors_offsets.npy")


def _truncate(p: Path, name: str) -> None:
    (p / name).write_bytes((p / name).read_bytes()[:-40])
    rehash(p, name)


def _short_ids(p: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"d{i}" for i in range(29)]}), p / "doc_ids.parquet")
    rehash(p, "doc_ids.parquet")


@pytest.fixture(scope="module")
def saved_fde(tmp_path_factory):
    rng = np.random.default_rng(5)
    docs = MultiVectors.from_list(random_sets(rng, 30, 8, 5, np.float32, min_len=1), dtype=np.float16)
    path = tmp_path_factory.mktemp("fde") / "index"
    FDEIndex.build(docs, FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2), doc_ids=[f"d{i}" for i in range(30)]).save(path)
    return path


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_fde_directory_is_refused(saved_fde, tmp_path, name, verify):
    edit, culprit = DAMAGE[name]
    path = tmp_path / "index"
    shutil.copytree(saved_fde, path)
    edit(path)
    with pytest.raises(IndexFormatError, match=culprit.replace(".", r"\.")):
        FDEIndex.load(path, verify=verify)


def test_bad_offsets_never_reach_the_kernels(saved_fde, tmp_path):
    # offsets that decrease, overshoot or are huge, loaded without checksums and searched: the
    # process must survive (a kernel reading them would crash it) and report the file
    res = run_python(f"""
        import hashlib, json, shutil
        from pathlib import Path
        import numpy as np
        from lsr.errors import IndexFormatError
        from lsr.index.maxsim import MultiVectors, maxsim_search
        from lsr.index.muvera import FDEIndex
        q = MultiVectors.from_list([np.ones((2, 8), np.float32)])
        for case in range(4):
            p = Path({str(tmp_path)!r}) / f"c{{case}}"
            shutil.copytree({str(saved_fde)!r}, p)
            o = np.load(p / "multivectors_offsets.npy")
            o = [o[[0, 5, 2, *range(3, o.size)]], np.where(o > 0, o + 7, o), np.full_like(o, 2**62),
                 np.r_[o[:-1], o[-1] - 1]][case]
            np.save(p / "multivectors_offsets.npy", o)
            m = json.loads((p / "manifest.json").read_text())
            f = p / "multivectors_offsets.npy"
            m["files"]["multivectors_offsets.npy"] = {{"bytes": f.stat().st_size, "sha256": "x"}}
            (p / "manifest.json").write_text(json.dumps(m))
            try:
                idx = FDEIndex.load(p, verify=False)
                idx.search(q, k=3)
                maxsim_search(q, idx.docs, k=3)
                print("loaded")
            except IndexFormatError as exc:
                print("refused" if "multivectors_offsets.npy" in str(exc) else exc)
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["refused"] * 4, res.stdout


# ---------------------------------------------------------------------------- atomic saves
def test_failed_save_leaves_the_existing_index(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    docs = MultiVectors.from_list(random_sets(rng, 20, 8, 4, np.float32, min_len=1))
    old = FDEIndex.build(docs, FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2))
    old.save(tmp_path / "fde")
    old.dense.save(tmp_path / "dense")
    new = FDEIndex.build(docs.take(range(5)), FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2))
    import lsr.index.dense as dense_mod
    import lsr.index.muvera as muvera_mod

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(muvera_mod, "save_ids", broken)  # after the FDEs and vectors are written
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "fde")
    monkeypatch.setattr(dense_mod, "save_ids", broken)
    with pytest.raises(OSError, match="disk full"):
        new.dense.save(tmp_path / "dense")
    current = {(tmp_path / "dense").resolve().name, (tmp_path / "fde").resolve().name}  # saved versions
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in current) == ["dense", "fde"]  # no temporary left
    assert len(FDEIndex.load(tmp_path / "fde")) == 20 and len(DenseIndex.load(tmp_path / "dense")) == 20
