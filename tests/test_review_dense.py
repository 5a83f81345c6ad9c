"""Independent review of the dense / multi-vector / MUVERA code.

Differential tests against references written here (float64 loop MaxSim, a loop-by-loop FDE
from the paper and Google's fixed_dimensional_encoding.cc, sentence-transformers itself), plus
corrupt index directories, bad input and interrupted saves. Checks that could crash the
process if a guard regressed (FAISS aborts, Numba kernels reading bad offsets) run in a
subprocess.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from lsr.errors import IndexFormatError  # noqa: E402
from lsr.index.dense import DenseIndex  # noqa: E402
from lsr.index.maxsim import MultiVectors, maxsim_rerank, maxsim_scores, maxsim_search  # noqa: E402
from lsr.index.muvera import FDEConfig, FDEEncoder, FDEIndex  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- MaxSim references
def loop_maxsim(q_sets, d_sets) -> np.ndarray:
    """float64 MaxSim by loops; documents without vectors score -inf."""
    out = np.full((len(q_sets), len(d_sets)), -np.inf)
    for i, q in enumerate(q_sets):
        for j, d in enumerate(d_sets):
            if len(d):
                out[i, j] = sum(max(float(np.dot(qv, dv)) for dv in d.astype(np.float64))
                                for qv in q.astype(np.float64))
    return out


def ranked(scores_row, positions, k):
    """Distinct positions with a finite score, best first, ties by lower position, at most k."""
    pos = sorted({int(p) for p in positions if p >= 0 and np.isfinite(scores_row[p])},
                 key=lambda p: (-scores_row[p], p))
    return pos[:k]


def random_sets(rng, n, dim, max_len, dtype, min_len=0):
    return [rng.normal(size=(int(rng.integers(min_len, max_len + 1)), dim)).astype(dtype) for _ in range(n)]


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
    ref = loop_maxsim(queries, docs)
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
    ref = loop_maxsim(queries, docs)
    cand = np.tile(np.arange(90)[::-1], (6, 1))
    for k in (1, 4, 31, 46, 89, 90):
        ids, _ = maxsim_search(q, d, k=k)
        r_ids, _ = maxsim_rerank(q, d, cand, k=k, threads=2)
        for i in range(6):
            want = ranked(ref[i], range(90), k)
            assert ids[i].tolist() == want, (k, i)
            assert r_ids[i].tolist() == want, (k, i)


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


# ---------------------------------------------------------------------------- FDE reference
def loop_fde(enc: FDEEncoder, points: np.ndarray, document: bool) -> np.ndarray:
    """FDE of one point set, written loop by loop after fixed_dimensional_encoding.cc."""
    c = enc.config
    dp, parts = c.projection_dim, 2 ** c.k_sim
    points = np.asarray(points, np.float32)
    out = np.zeros(c.reps * parts * dp)
    for rep in range(c.reps):
        sketch = points @ enc.simhash[rep]  # (n, k_sim) SimHash projections
        labels, counts = [], np.zeros(parts)
        for p in range(len(points)):
            code = 0
            for j in range(c.k_sim):  # AppendToGrayCode
                bit = int(sketch[p, j] > 0)
                code = (code << 1) + (bit ^ (code & 1))
            labels.append(code)
            counts[code] += 1
        projected = np.zeros((len(points), dp))
        for p in range(len(points)):
            for i in range(c.dim):  # AMS: input coordinate i goes to one output with a sign
                if enc.ams[rep] is None:
                    projected[p, i] = points[p, i]
                else:
                    t = int(np.flatnonzero(enc.ams[rep][i])[0])
                    projected[p, t] += enc.ams[rep][i, t] * points[p, i]
        block = out[rep * parts * dp:(rep + 1) * parts * dp].reshape(parts, dp)
        for p in range(len(points)):
            block[labels[p]] += projected[p]
        if not document:
            continue
        for j in range(parts):
            if counts[j]:
                block[j] /= counts[j]
            elif c.k_sim and c.fill_empty_partitions and len(points):
                best, best_d = 0, None
                for p in range(len(points)):
                    binary, dist = j ^ (j >> 1), 0
                    for i in range(c.k_sim - 1, -1, -1):
                        dist += int(int(sketch[p, i] > 0) != (binary & 1))
                        binary >>= 1
                    if best_d is None or dist < best_d:
                        best, best_d = p, dist
                block[j] = projected[best]
    if c.final_dim is None:
        return out
    idx, sign = enc.count_sketch
    final = np.zeros(c.final_dim)
    for i, v in enumerate(out):
        final[idx[i]] += sign[i] * v
    return final


FDE_CONFIGS = [
    FDEConfig(dim=6, k_sim=0, d_proj=None, reps=2),
    FDEConfig(dim=6, k_sim=0, d_proj=3, reps=2, final_dim=5),
    FDEConfig(dim=6, k_sim=1, d_proj=6, reps=3),  # d_proj == dim: identity
    FDEConfig(dim=6, k_sim=2, d_proj=4, reps=2),
    FDEConfig(dim=6, k_sim=3, d_proj=8, reps=2, final_dim=19, fill_empty_partitions=False),
    FDEConfig(dim=6, k_sim=6, d_proj=2, reps=2),  # mostly empty partitions, many fill ties
    FDEConfig(dim=6, k_sim=3, d_proj=None, reps=1, final_dim=200),
]


def fde_point_sets(dim=6):
    rng = np.random.default_rng(21)
    sets = [rng.normal(size=(int(rng.integers(1, 6)), dim)).astype(np.float32) for _ in range(13)]
    for i in (0, 5, 12):
        sets[i] = np.zeros((0, dim), np.float32)  # empty sets at a batch start, middle and end
    sets[3] = np.repeat(sets[3][:1], 3, axis=0)  # identical points
    sets[7][0] = 0.0  # a zero vector (no positive SimHash bit)
    return sets


@pytest.mark.parametrize("batch", [2, 5, 512])
@pytest.mark.parametrize("config", FDE_CONFIGS, ids=lambda c: f"k{c.k_sim}-p{c.d_proj}-r{c.reps}-f{c.final_dim}"
                         f"-{'fill' if c.fill_empty_partitions else 'nofill'}")
def test_fde_matches_loop_reference(config, batch, monkeypatch):
    import lsr.index.muvera as muvera

    monkeypatch.setattr(muvera, "_ENCODE_BATCH", batch)  # batch boundaries inside the set list
    enc = FDEEncoder(config)
    sets = fde_point_sets()
    for dtype in (np.float32, np.float16):
        mv = MultiVectors.from_list(sets, dtype=dtype)
        q, d = enc.encode_queries(mv), enc.encode_documents(mv)
        assert q.shape == d.shape == (13, config.output_dim) and q.dtype == d.dtype == np.float32
        for i, pts in enumerate(sets):
            pts = pts.astype(dtype)
            np.testing.assert_allclose(q[i], loop_fde(enc, pts, False), atol=1e-5, err_msg=f"query {i}")
            np.testing.assert_allclose(d[i], loop_fde(enc, pts, True), atol=1e-5, err_msg=f"document {i}")


def test_fde_of_no_sets_is_empty():
    enc = FDEEncoder(FDEConfig(dim=6, k_sim=2, d_proj=4, reps=2))
    empty = MultiVectors.from_list([], dim=6)
    assert enc.encode_queries(empty).shape == (0, 32)
    assert enc.encode_documents(empty).shape == (0, 32)


def test_fde_random_matrices_have_the_documented_structure():
    c = FDEConfig(dim=256, k_sim=8, d_proj=16, reps=4, final_dim=100, seed=7)
    enc = FDEEncoder(c)
    for rep in range(c.reps):  # repetition r is seeded with seed + r
        one = FDEEncoder(FDEConfig(dim=256, k_sim=8, d_proj=16, reps=1, seed=7 + rep))
        np.testing.assert_array_equal(enc.simhash[rep], one.simhash[0])
        np.testing.assert_array_equal(enc.ams[rep], one.ams[0])
        ams = enc.ams[rep]
        assert ams.shape == (256, 16) and np.all((ams != 0).sum(axis=1) == 1)
        assert set(np.unique(ams[ams != 0])) <= {-1.0, 1.0}
    g = np.concatenate([s.ravel() for s in enc.simhash])  # Gaussian hyperplanes
    assert abs(g.mean()) < 0.05 and abs(g.std() - 1) < 0.05
    assert not np.array_equal(enc.simhash[0], enc.simhash[1])
    idx, sign = enc.count_sketch
    assert idx.shape == sign.shape == (c.block_dim,) and idx.min() >= 0 and idx.max() < 100
    assert set(np.unique(sign)) == {-1.0, 1.0}


# ---------------------------------------------------------------------------- bad input
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


def test_rerank_refuses_candidates_below_minus_one():
    docs = MultiVectors.from_list([np.ones((1, 4), np.float32)] * 3)
    q = MultiVectors.from_list([np.ones((1, 4), np.float32)])
    with pytest.raises(ValueError, match="candidate"):
        maxsim_rerank(q, docs, np.array([[0, -100]]), k=2)


def run_python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


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


# ---------------------------------------------------------------------------- damaged directories
def _rehash(root: Path, rel: str, manifest: str = "manifest.json") -> None:
    m = json.loads((root / manifest).read_text())
    f = (root / manifest).parent / rel
    m["files"][rel] = {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (root / manifest).write_text(json.dumps(m))


def _edit(root: Path, fn, manifest: str = "manifest.json") -> None:
    m = json.loads((root / manifest).read_text())
    fn(m)
    (root / manifest).write_text(json.dumps(m))


def _replace_faiss(root: Path, index) -> None:
    import faiss

    faiss.write_index(index, str(root / "fde" / "faiss.index"))
    _rehash(root, "faiss.index", "fde/manifest.json")  # both manifests agree: only the content is wrong
    _rehash(root, "fde/faiss.index")


def _faiss_of(kind: str, dim: int, n: int):
    import faiss

    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    if kind == "l2":
        index = faiss.IndexFlatL2(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, 2, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
    index.add(x)
    return index


DAMAGE = {  # name: (edit of a saved FDE index, file the error must name)
    "no manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json"),
    "foreign format": (lambda p: _edit(p, lambda m: m.update(format="lsr.dense")), "lsr.dense"),
    "offsets decrease": (lambda p: _save_offsets(p, lambda o: o[[0, 2, 1, *range(3, o.size)]]),
                         "multivectors_offsets.npy"),
    "offsets beyond the vectors": (lambda p: _save_offsets(p, lambda o: np.where(o > 0, o + 1000, o)),
                                   "multivectors_offsets.npy"),
    "vectors truncated": (lambda p: _truncate(p, "multivectors.npy"), "multivectors.npy"),
    "doc ids one short": (lambda p: _short_ids(p), "doc_ids.parquet"),
    "fde reps edited": (lambda p: _edit(p, lambda m: m["fde"].update(reps=3)), "/fde:"),
    "fde seed not a number": (lambda p: _edit(p, lambda m: m["fde"].update(seed="x")), "manifest.json"),
    "fde seed negative": (lambda p: _edit(p, lambda m: m["fde"].update(seed=-5)), "manifest.json"),
    "candidates zero": (lambda p: _edit(p, lambda m: m.update(candidates=0)), "manifest.json"),
    "candidates not a number": (lambda p: _edit(p, lambda m: m.update(candidates="many")), "manifest.json"),
    "inner type says hnsw": (lambda p: _edit(p, lambda m: m.update(index_type="hnsw"), "fde/manifest.json"),
                             "faiss.index"),
    "inner type says ivf": (lambda p: _edit(p, lambda m: m.update(index_type="ivf"), "fde/manifest.json"),
                            "faiss.index"),
    "faiss file is hnsw": (lambda p: _replace_faiss(p, _faiss_of("hnsw", 32, 30)), "faiss.index"),
    "faiss file is ivf": (lambda p: _replace_faiss(p, _faiss_of("ivf", 32, 30)), "faiss.index"),
    "faiss file is L2": (lambda p: _replace_faiss(p, _faiss_of("l2", 32, 30)), "faiss.index"),
}


def _save_offsets(p: Path, fn) -> None:
    np.save(p / "multivectors_offsets.npy", fn(np.load(p / "multivectors_offsets.npy")))
    _rehash(p, "multivectors_offsets.npy")


def _truncate(p: Path, name: str) -> None:
    (p / name).write_bytes((p / name).read_bytes()[:-40])
    _rehash(p, name)


def _short_ids(p: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"d{i}" for i in range(29)]}), p / "doc_ids.parquet")
    _rehash(p, "doc_ids.parquet")


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


@pytest.mark.parametrize("edit", ["flat->hnsw", "hnsw->flat", "ivf nprobe missing", "ivf nprobe -1",
                                  "hnsw ef_search 0", "L2 file"])
def test_damaged_dense_manifest_is_refused(tmp_path, edit):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    kind = edit.split()[0].split("-")[0] if "L2" not in edit else "flat"
    path = tmp_path / "dense"
    DenseIndex.build(x, index_type=kind).save(path)
    if "->" in edit:
        _edit(path, lambda m: m.update(index_type=edit.split("->")[1]))
    elif "missing" in edit:
        _edit(path, lambda m: m["params"].pop("nprobe"))
    elif "L2" in edit:
        import faiss

        faiss.write_index(_faiss_of("l2", 8, 200), str(path / "faiss.index"))
        _rehash(path, "faiss.index")
    else:
        key, value = edit.split()[1:]
        _edit(path, lambda m: m["params"].update({key: int(value)}))
    with pytest.raises(IndexFormatError, match=r"manifest\.json|faiss\.index"):
        DenseIndex.load(path)


# ---------------------------------------------------------------------------- DenseIndex round trips
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "fde"]  # no temporary left
    assert len(FDEIndex.load(tmp_path / "fde")) == 20 and len(DenseIndex.load(tmp_path / "dense")) == 20


# ---------------------------------------------------------------------------- encoders
torch_needed = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch (the encoders' optional extra: pip install lsr[encoders])")


@pytest.fixture(scope="module")
def st_model(tmp_path_factory):
    pytest.importorskip("torch")
    from conftest_dense import build_sentence_transformer

    return build_sentence_transformer(tmp_path_factory.mktemp("review") / "st", max_seq_length=48)


@torch_needed
def test_missing_or_foreign_model_paths_name_the_path(tmp_path):
    from lsr.encoders.embedding import DenseEncoder
    from lsr.encoders.multivector import MultiVectorEncoder

    (tmp_path / "not_a_model").mkdir()
    for cls in (DenseEncoder, MultiVectorEncoder):
        for bad in (tmp_path / "missing" / "model", tmp_path / "not_a_model"):
            with pytest.raises(FileNotFoundError, match=str(bad)):
                cls(str(bad), device="cpu")


@torch_needed
def test_model_path_with_tilde(st_model, tmp_path, monkeypatch):
    from lsr.encoders.embedding import DenseEncoder
    from lsr.encoders.multivector import MultiVectorEncoder

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "st").symlink_to(st_model)
    dense = DenseEncoder("~/st", device="cpu")
    np.testing.assert_array_equal(dense.encode_queries(["heart"]),
                                  DenseEncoder(st_model, device="cpu").encode_queries(["heart"]))
    assert len(MultiVectorEncoder("~/st", device="cpu").encode_queries(["heart"])) == 1


@torch_needed
def test_cli_names_a_missing_model(tiny_beir, tmp_path):
    from click.testing import CliRunner

    from lsr.cli import main

    missing = tmp_path / "no-such-model"
    for retriever in ("dense", "maxsim", "muvera"):
        res = CliRunner().invoke(main, ["eval", str(tiny_beir), "-r", retriever, "-m", str(missing),
                                        "--device", "cpu", "-o", str(tmp_path / "out")])
        assert res.exit_code != 0 and str(missing) in res.output and "Repo id" not in res.output, res.output


@torch_needed
def test_retrievers_on_an_empty_corpus_and_no_queries(st_model, tmp_path):
    from lsr import load_retriever
    from lsr.retrievers.base import retriever_class

    opts = dict(model=str(st_model), device="cpu", doc_max_length=48, query_max_length=16)
    for name, extra in (("dense", {}), ("maxsim", {}), ("muvera", dict(fde_reps=2, fde_k_sim=2, fde_d_proj=8))):
        r = retriever_class(name).from_options(**opts, **extra)
        r.index([], [])
        assert r.search(["heart disease"], k=3).ids.shape == (1, 0)  # k capped at the empty corpus
        assert r.search([], k=3).ids.shape == (0, 0)
        r.save(tmp_path / name)
        assert load_retriever(tmp_path / name).search(["heart"], k=2).ids.shape == (1, 0)
    mv = retriever_class("maxsim").from_options(**opts).encoder
    assert len(mv.encode_documents([])) == 0 and len(mv.encode_queries([])) == 0


@torch_needed
def test_max_length_beyond_the_model_positions_truncates(st_model):
    from lsr.encoders.embedding import DenseEncoder
    from lsr.encoders.multivector import MultiVectorEncoder

    long_text = " ".join(["heart"] * 300)  # the tiny model has 128 positions
    for cls in (DenseEncoder, MultiVectorEncoder):
        wide = cls(st_model, device="cpu", doc_max_length=256, query_max_length=200)
        fits = cls(st_model, device="cpu", doc_max_length=128, query_max_length=128)
        for kind in ("encode_documents", "encode_queries"):
            a, b = getattr(wide, kind)([long_text]), getattr(fits, kind)([long_text])
            a, b = (a, b) if cls is DenseEncoder else (a.vectors, b.vectors)
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-5)


@torch_needed
def test_dense_module_matches_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers")
    import torch
    from conftest_dense import HIDDEN, build_sentence_transformer
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    from lsr.encoders.embedding import DenseEncoder

    d = build_sentence_transformer(tmp_path / "st", pooling="mean", normalize=False, max_seq_length=40)
    modules = json.loads((d / "modules.json").read_text()) + [
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "2_Dense").mkdir()
    (d / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": HIDDEN, "out_features": 12, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh"}))
    g = torch.Generator().manual_seed(3)
    save_file({"linear.weight": torch.randn(12, HIDDEN, generator=g), "linear.bias": torch.randn(12, generator=g)},
              str(d / "2_Dense" / "model.safetensors"))
    texts = ["heart disease", "what the stock market did on a long and busy tuesday afternoon", ""]
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, convert_to_numpy=True)
    enc = DenseEncoder(d, device="cpu", batch_size=2)
    assert enc.dim == 12
    np.testing.assert_allclose(enc.encode_documents(texts), ref, atol=2e-5)


# ---------------------------------------------------------------------------- argument and settings checks
def test_fde_config_refuses_non_integer_settings():
    for bad in (dict(k_sim=True), dict(d_proj=2.0), dict(reps="3"), dict(final_dim=1.5), dict(seed=None)):
        with pytest.raises(TypeError, match=next(iter(bad))):
            FDEConfig(dim=8, **bad)
    with pytest.raises(TypeError, match="fill_empty_partitions"):
        FDEConfig(dim=8, fill_empty_partitions="no")
    with pytest.raises(ValueError, match="seed"):
        FDEConfig(dim=8, seed=-1)
    assert FDEConfig(dim=np.int64(8), d_proj=None, final_dim=None).output_dim == 8 * 8 * 10


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


def test_rerank_refuses_float_candidates():
    rng = np.random.default_rng(6)
    docs = MultiVectors.from_list(random_sets(rng, 5, 4, 3, np.float32, min_len=1))
    queries = MultiVectors.from_list(random_sets(rng, 2, 4, 2, np.float32, min_len=1))
    with pytest.raises(TypeError, match="integer positions"):
        maxsim_rerank(queries, docs, np.array([[0.0, 1.7], [2.0, 3.0]]), k=1)
    ids, _ = maxsim_rerank(queries, docs, np.array([[0, 1], [2, 3]], dtype=np.int32), k=1)
    assert ids.shape == (2, 1)


@pytest.mark.parametrize("module, cls", [("lsr.encoders.embedding", "DenseEncoder"),
                                         ("lsr.encoders.multivector", "MultiVectorEncoder")])
def test_damaged_encoder_json_is_named(tmp_path, module, cls):
    import importlib

    encoder_cls = getattr(importlib.import_module(module), cls)
    path = tmp_path / "encoder.json"
    with pytest.raises(IndexFormatError, match="encoder.json: missing"):
        encoder_cls.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(IndexFormatError, match="encoder.json: not readable JSON"):
        encoder_cls.load(tmp_path)
    path.write_text(json.dumps({"model": "x"}))
    with pytest.raises(IndexFormatError, match=r"encoder.json: missing field\(s\) .*query_max_length"):
        encoder_cls.load(tmp_path)


@torch_needed
def test_muvera_identity_projection_option_is_kept(st_model, tmp_path):
    from lsr import load_retriever
    from lsr.retrievers.base import retriever_class

    opts = dict(model=str(st_model), device="cpu", doc_max_length=48, query_max_length=16)
    texts = ["heart disease risk", "blood pressure", "cancer cells divide"]
    r = retriever_class("muvera").from_options(**opts, fde_d_proj=0, fde_k_sim=1, fde_reps=2)
    r.index(["a", "b", "c"], texts)
    config = r.fde_index.encoder.config
    assert config.d_proj is None and config.identity and config.k_sim == 1 and config.reps == 2
    r.save(tmp_path / "m")
    loaded = load_retriever(tmp_path / "m")
    loaded.index(["a", "b", "c"], texts)  # re-indexing a loaded retriever keeps its settings
    assert loaded.fde_index.encoder.config == config
    default = retriever_class("muvera").from_options(**opts)
    default.index(["a", "b", "c"], texts)
    assert default.fde_index.encoder.config == FDEConfig(dim=config.dim)
