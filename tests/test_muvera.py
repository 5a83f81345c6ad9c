"""MUVERA FDEs against a direct, loop-by-loop port of the reference algorithm on small inputs."""
from __future__ import annotations

import numpy as np
import pytest

import lsr.index.muvera as muvera
from lsr.index.maxsim import MultiVectors, maxsim_scores
from lsr.index.muvera import FDEConfig, FDEEncoder, gray_partition_index


# ---------------------------------------------------------------- direct reference (fixed_dimensional_encoding.cc)
def append_to_gray_code(code, bit):
    return (code << 1) + (int(bit) ^ (code & 1))


def simhash_partition_index(sketch_row):
    idx = 0
    for v in sketch_row:
        idx = append_to_gray_code(idx, v > 0)
    return idx


def distance_to_partition(sketch_row, index):
    binary = index ^ (index >> 1)
    dist = 0
    for v in reversed(sketch_row):
        dist += int((1 if v > 0 else 0) != (binary & 1))
        binary >>= 1
    return dist


def reference_fde(enc: FDEEncoder, points: np.ndarray, document: bool) -> np.ndarray:
    """FDE of one point set, point by point after fixed_dimensional_encoding.cc (float64 sums)."""
    c = enc.config
    dp, parts = c.projection_dim, c.partitions
    out = np.zeros(c.reps * parts * dp, dtype=np.float64)
    for rep in range(c.reps):
        sketch = points @ enc.simhash[rep]
        proj = points if enc.ams[rep] is None else points @ enc.ams[rep]
        sizes = np.zeros(parts)
        for p in range(len(points)):
            j = simhash_partition_index(sketch[p]) if c.k_sim else 0
            base = rep * parts * dp + j * dp
            out[base:base + dp] += proj[p]
            sizes[j] += 1
        if not document:
            continue
        for j in range(parts):
            base = rep * parts * dp + j * dp
            if sizes[j] == 0 and c.k_sim > 0:
                if c.fill_empty_partitions and len(points):
                    dists = [distance_to_partition(sketch[p], j) for p in range(len(points))]
                    out[base:base + dp] = proj[int(np.argmin(dists))]  # first minimum, as the reference
                continue
            if sizes[j]:
                out[base:base + dp] /= sizes[j]
    if c.final_dim is not None:
        idx, sign = enc.count_sketch
        final = np.zeros(c.final_dim)
        for i, v in enumerate(out):
            final[idx[i]] += sign[i] * v
        return final
    return out


def point_sets(seed=0, n=6, dim=8, max_len=7):
    rng = np.random.default_rng(seed)
    sets = [rng.normal(size=(int(rng.integers(1, max_len)), dim)).astype(np.float32) for _ in range(n)]
    sets.append(np.zeros((0, dim), np.float32))  # an empty set
    return sets


CONFIGS = [
    FDEConfig(dim=8, k_sim=3, d_proj=None, reps=2),
    FDEConfig(dim=8, k_sim=2, d_proj=4, reps=3),
    FDEConfig(dim=8, k_sim=4, d_proj=5, reps=2, fill_empty_partitions=False),
    FDEConfig(dim=8, k_sim=3, d_proj=4, reps=2, final_dim=17),
    FDEConfig(dim=8, k_sim=0, d_proj=None, reps=1),
]


EDGE_CONFIGS = [  # every k_sim / projection / final_dim variant, edge settings
    FDEConfig(dim=6, k_sim=0, d_proj=None, reps=2),
    FDEConfig(dim=6, k_sim=0, d_proj=3, reps=2, final_dim=5),
    FDEConfig(dim=6, k_sim=1, d_proj=6, reps=3),  # d_proj == dim: identity
    FDEConfig(dim=6, k_sim=2, d_proj=4, reps=2),
    FDEConfig(dim=6, k_sim=3, d_proj=8, reps=2, final_dim=19, fill_empty_partitions=False),
    FDEConfig(dim=6, k_sim=6, d_proj=2, reps=2),  # mostly empty partitions, many fill ties
    FDEConfig(dim=6, k_sim=3, d_proj=None, reps=1, final_dim=200),
]


def edge_point_sets(dim=6):
    """Empty sets at a batch start, middle and end, identical points and a zero vector."""
    rng = np.random.default_rng(21)
    sets = [rng.normal(size=(int(rng.integers(1, 6)), dim)).astype(np.float32) for _ in range(13)]
    for i in (0, 5, 12):
        sets[i] = np.zeros((0, dim), np.float32)  # empty sets at a batch start, middle and end
    sets[3] = np.repeat(sets[3][:1], 3, axis=0)  # identical points
    sets[7][0] = 0.0  # a zero vector (no positive SimHash bit)
    return sets


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"k{c.k_sim}-p{c.d_proj}-r{c.reps}-f{c.final_dim}")
def test_fde_matches_direct_reference(config):
    enc = FDEEncoder(config)
    sets = point_sets()
    mv = MultiVectors.from_list(sets)
    q, d = enc.encode_queries(mv), enc.encode_documents(mv)
    assert q.shape == d.shape == (len(sets), config.output_dim) and q.dtype == np.float32
    for i, pts in enumerate(sets):
        np.testing.assert_allclose(q[i], reference_fde(enc, pts, document=False), atol=1e-5)
        np.testing.assert_allclose(d[i], reference_fde(enc, pts, document=True), atol=1e-5)


def test_gray_code_labels():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2, size=(50, 5))
    expected = [simhash_partition_index(b - 0.5) for b in bits]
    assert gray_partition_index(bits).tolist() == expected
    # adjacent labels differ in exactly one sign bit (the Gray-code property)
    for j in range(31):
        a, b = j ^ (j >> 1), (j + 1) ^ ((j + 1) >> 1)
        assert bin(a ^ b).count("1") == 1


def test_one_vector_inner_product_equals_dot_product():
    rng = np.random.default_rng(4)
    config = FDEConfig(dim=16, k_sim=4, d_proj=None, reps=5)
    enc = FDEEncoder(config)
    for _ in range(20):
        q, d = rng.normal(size=(1, 16)).astype(np.float32), rng.normal(size=(1, 16)).astype(np.float32)
        fq = enc.encode_queries(MultiVectors.from_list([q]))[0]
        fd = enc.encode_documents(MultiVectors.from_list([d]))[0]
        # every document partition holds d (its own or filled), so each repetition adds <q, d>
        assert np.isclose(fq @ fd, config.reps * float(q[0] @ d[0]), rtol=1e-4, atol=1e-4)


def test_query_partition_sums_and_document_averages():
    config = FDEConfig(dim=8, k_sim=3, d_proj=None, reps=1, fill_empty_partitions=False)
    enc = FDEEncoder(config)
    pts = np.random.default_rng(5).normal(size=(9, 8)).astype(np.float32)
    labels = [simhash_partition_index(r) for r in pts @ enc.simhash[0]]
    q = enc.encode_queries(MultiVectors.from_list([pts]))[0].reshape(8, 8)
    d = enc.encode_documents(MultiVectors.from_list([pts]))[0].reshape(8, 8)
    for j in range(8):
        members = pts[np.array(labels) == j]
        np.testing.assert_allclose(q[j], members.sum(0) if len(members) else 0, atol=1e-5)
        np.testing.assert_allclose(d[j], members.mean(0) if len(members) else 0, atol=1e-5)
    np.testing.assert_allclose(q.sum(0), pts.sum(0), atol=1e-4)  # every query vector lands once


def test_empty_partitions_filled_from_nearest_point():
    config = FDEConfig(dim=8, k_sim=4, d_proj=None, reps=1)
    enc = FDEEncoder(config)
    pts = np.random.default_rng(6).normal(size=(2, 8)).astype(np.float32)
    sketch = pts @ enc.simhash[0]
    d = enc.encode_documents(MultiVectors.from_list([pts]))[0].reshape(16, 8)
    own = {simhash_partition_index(r) for r in sketch}
    for j in range(16):
        if j in own:
            continue
        dists = [distance_to_partition(r, j) for r in sketch]
        np.testing.assert_allclose(d[j], pts[int(np.argmin(dists))], atol=1e-6)
    assert not np.any(np.all(d == 0, axis=1))  # no partition left empty


def test_fde_inner_product_tracks_maxsim():
    """With enough repetitions the FDE score ranks documents like MaxSim (a sanity check)."""
    rng = np.random.default_rng(7)
    docs = [rng.normal(size=(int(rng.integers(5, 15)), 16)) for _ in range(60)]
    docs = MultiVectors.from_list([(d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32) for d in docs])
    queries = MultiVectors.from_list([docs[i][:4] + 0.1 * rng.normal(size=(4, 16)).astype(np.float32)
                                      for i in range(0, 60, 6)])
    enc = FDEEncoder(FDEConfig(dim=16, k_sim=3, d_proj=None, reps=20))
    fde = enc.encode_queries(queries) @ enc.encode_documents(docs).T
    exact = maxsim_scores(queries, docs)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(fde, exact)]
    assert np.mean(corr) > 0.8


def test_deterministic_and_config_checks():
    c = FDEConfig(dim=8, k_sim=3, d_proj=4, reps=2, final_dim=10)
    mv = MultiVectors.from_list(point_sets(1))
    np.testing.assert_array_equal(FDEEncoder(c).encode_documents(mv), FDEEncoder(c).encode_documents(mv))
    assert FDEConfig.from_dict(c.to_dict()) == c
    assert c.block_dim == 2 * 8 * 4 and c.output_dim == 10
    with pytest.raises(ValueError, match="k_sim"):
        FDEConfig(dim=8, k_sim=31)
    with pytest.raises(ValueError, match="dimension"):
        FDEEncoder(c).encode_queries(MultiVectors.from_list([np.ones((2, 5), np.float32)]))


@pytest.mark.parametrize("batch", [2, 5, 512])
@pytest.mark.parametrize("config", EDGE_CONFIGS, ids=lambda c: f"k{c.k_sim}-p{c.d_proj}-r{c.reps}-f{c.final_dim}"
                         f"-{'fill' if c.fill_empty_partitions else 'nofill'}")
def test_fde_matches_loop_reference(config, batch, monkeypatch):
    monkeypatch.setattr(muvera, "_ENCODE_BATCH", batch)  # batch boundaries inside the set list
    enc = FDEEncoder(config)
    sets = edge_point_sets()
    for dtype in (np.float32, np.float16):
        mv = MultiVectors.from_list(sets, dtype=dtype)
        q, d = enc.encode_queries(mv), enc.encode_documents(mv)
        assert q.shape == d.shape == (13, config.output_dim) and q.dtype == d.dtype == np.float32
        for i, pts in enumerate(sets):
            pts = pts.astype(dtype)
            np.testing.assert_allclose(q[i], reference_fde(enc, pts, False), atol=1e-5, err_msg=f"query {i}")
            np.testing.assert_allclose(d[i], reference_fde(enc, pts, True), atol=1e-5, err_msg=f"document {i}")


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


def test_fde_config_refuses_non_integer_settings():
    for bad in (dict(k_sim=True), dict(d_proj=2.0), dict(reps="3"), dict(final_dim=1.5), dict(seed=None)):
        with pytest.raises(TypeError, match=next(iter(bad))):
            FDEConfig(dim=8, **bad)
    with pytest.raises(TypeError, match="fill_empty_partitions"):
        FDEConfig(dim=8, fill_empty_partitions="no")
    with pytest.raises(ValueError, match="seed"):
        FDEConfig(dim=8, seed=-1)
    assert FDEConfig(dim=np.int64(8), d_proj=None, final_dim=None).output_dim == 8 * 8 * 10
