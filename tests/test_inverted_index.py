"""InvertedIndex against a brute-force scipy reference, plus persistence and corruption checks."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import IndexFormatError, InvertedIndex, SparseBatch


def brute_force(docs: sp.csr_matrix, queries: sp.csr_matrix, k: int):
    """Reference: dense scores in float64; a document matches if it shares a term with the query."""
    scores = (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    match = ((abs(queries) > 0).astype(np.int64) @ (abs(docs) > 0).astype(np.int64).T).toarray() > 0
    out = []
    for i in range(queries.shape[0]):
        cand = np.flatnonzero(match[i])
        order = cand[np.lexsort((cand, -scores[i, cand]))][:k]
        out.append((order, scores[i, order]))
    return out


def assert_same_topk(index, docs, queries, k, threads=1, atol=1e-5):
    ids, scores = index.search(queries, k=k, threads=threads)
    assert ids.shape == scores.shape == (queries.shape[0], min(k, docs.shape[0]))  # k capped at the corpus
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    ref = brute_force(docs, queries, k)
    full = (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    for i, (ref_ids, ref_scores) in enumerate(ref):
        n = len(ref_ids)
        assert np.all(ids[i, n:] == -1), "rows must be padded with -1 beyond the matches"
        assert np.all(ids[i, :n] >= 0)
        np.testing.assert_allclose(scores[i, :n], ref_scores, atol=atol, rtol=1e-5)
        # same ids up to ties: each returned id's true score equals the reference score at its rank
        np.testing.assert_allclose(full[i, ids[i, :n]], ref_scores, atol=atol, rtol=1e-5)
        # and ids are unique
        assert len(set(ids[i, :n].tolist())) == n


def random_csr(rng, n, v, density, low=0.01):
    m = sp.random(n, v, density=density, format="csr", dtype=np.float32, random_state=rng)
    m.data = (m.data + low).astype(np.float32)
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_random_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    docs = random_csr(rng, 1500, 300, 0.03)
    queries = random_csr(rng, 40, 300, 0.02)
    index = InvertedIndex.from_csr(docs)
    assert_same_topk(index, docs, queries, k)
    assert_same_topk(index, docs, queries, k, threads=2)


@pytest.mark.parametrize("signed", ["queries", "documents"])
def test_signed_weights_match_brute_force(signed):
    # negative weights take the kernel's explicit match-tracking path
    rng = np.random.default_rng(11)
    docs = random_csr(rng, 800, 100, 0.05)
    queries = random_csr(rng, 30, 100, 0.05)
    target = queries if signed == "queries" else docs
    target.data = (target.data * rng.choice([-1.0, 1.0], target.data.size)).astype(np.float32)
    index = InvertedIndex.from_csr(docs)
    assert index.positive == (signed == "queries")
    assert_same_topk(index, docs, queries, k=50)
    assert_same_topk(index, docs, queries, k=50, threads=2)


def test_ties_are_broken_by_position_and_threads_agree():
    docs = sp.csr_matrix(np.ones((50, 4), dtype=np.float32))
    q = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    index = InvertedIndex.from_csr(docs)
    ids, scores = index.search(q, k=5)
    assert ids[0].tolist() == [0, 1, 2, 3, 4]
    assert np.all(scores == 1.0)
    ids2, _ = index.search(sp.vstack([q] * 7).tocsr(), k=5, threads=2)
    assert (ids2 == ids[0]).all()


def test_edge_cases():
    rng = np.random.default_rng(3)
    docs = random_csr(rng, 30, 50, 0.1)
    docs = sp.vstack([docs, sp.csr_matrix((2, 50), dtype=np.float32)]).tocsr()  # documents with no terms
    index = InvertedIndex.from_csr(docs)
    # empty query, absent terms (a column no document uses), k > corpus size
    unused = int(np.flatnonzero(np.asarray((docs != 0).sum(axis=0)).ravel() == 0)[0]) if \
        (np.asarray((docs != 0).sum(axis=0)).ravel() == 0).any() else None
    rows = [([], []), ([1, 5, 7], [1.0, 0.5, 2.0])]
    if unused is not None:
        rows.append(([unused], [1.0]))
    queries = SparseBatch.from_rows(rows, vocab_size=50).to_scipy()
    assert_same_topk(index, docs, queries, k=100)
    ids, scores = index.search(queries, k=100)
    assert np.all(ids[0] == -1) and np.all(scores[0] == 0)


def test_query_terms_outside_vocabulary_match_nothing():
    docs = sp.csr_matrix(np.array([[1.0, 2.0]], dtype=np.float32))
    index = InvertedIndex.from_csr(docs)
    q = sp.csr_matrix(np.array([[0.0, 1.0, 0.0, 5.0]], dtype=np.float32))  # query vocab is larger
    ids, scores = index.search(q, k=3)
    assert ids[0].tolist() == [0] and scores[0, 0] == pytest.approx(2.0)  # k capped at 1 document


def test_duplicate_term_ids_are_summed():
    # duplicates in both documents (COO input) and queries
    d = sp.coo_matrix((np.array([1.0, 2.0, 3.0], np.float32), (np.array([0, 0, 1]), np.array([2, 2, 2]))),
                      shape=(2, 4))
    index = InvertedIndex.from_csr(d)
    q = sp.csr_matrix((np.array([1.0, 1.0], np.float32), np.array([2, 2]), np.array([0, 2])), shape=(1, 4))
    ids, scores = index.search(q, k=2)
    # doc 0 has weight 3 on term 2, doc 1 has 3: query weight 2 -> both score 6, tie by position
    assert ids[0].tolist() == [0, 1]
    np.testing.assert_allclose(scores[0], [6.0, 6.0])


def test_one_document_corpus():
    docs = sp.csr_matrix(np.array([[0.0, 1.5, 0.0]], dtype=np.float32))
    index = InvertedIndex.from_csr(docs, doc_ids=["only"])
    res = index.search(docs, k=4)
    ids, scores = res
    assert ids[0].tolist() == [0]  # k capped at the corpus
    assert index.doc_ids[0] == "only" and res.external_ids().tolist() == [["only"]]
    nothing = index.search(sp.csr_matrix(np.array([[1.0, 0.0, 0.0]], dtype=np.float32)), k=4)
    assert nothing.ids.tolist() == [[-1]] and nothing.external_ids().tolist() == [[None]]  # padding is no document
    assert scores[0, 0] == pytest.approx(2.25)


def test_bad_arguments():
    index = InvertedIndex.from_csr(sp.csr_matrix(np.eye(3, dtype=np.float32)))
    with pytest.raises(ValueError, match="k must be"):
        index.search(sp.csr_matrix(np.eye(3, dtype=np.float32)), k=0)
    with pytest.raises(ValueError, match="threads"):
        index.search(sp.csr_matrix(np.eye(3, dtype=np.float32)), threads=0)
    with pytest.raises(TypeError):
        index.search(np.eye(3), k=1)
    with pytest.raises(ValueError, match="duplicate document id"):
        InvertedIndex.from_csr(sp.csr_matrix(np.eye(2, dtype=np.float32)), doc_ids=["a", "a"])
    with pytest.raises(ValueError, match="doc_ids"):
        InvertedIndex.from_csr(sp.csr_matrix(np.eye(2, dtype=np.float32)), doc_ids=["a"])
    with pytest.raises(ValueError, match="finite"):
        InvertedIndex.from_csr(sp.csr_matrix(np.array([[np.nan]], dtype=np.float32)))


def test_concurrent_python_threads_get_identical_results():
    rng = np.random.default_rng(5)
    docs = random_csr(rng, 2000, 200, 0.05)
    queries = random_csr(rng, 64, 200, 0.05)
    index = InvertedIndex.from_csr(docs)
    expected = index.search(queries, k=10)
    results = [None] * 6

    def work(i):
        results[i] = index.search(queries, k=10, threads=1 + i % 2)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for ids, scores in results:
        assert (ids == expected.ids).all() and (scores == expected.scores).all()


# ------------------------------------------------------------------ persistence
@pytest.fixture
def built(tmp_path):
    rng = np.random.default_rng(7)
    docs = random_csr(rng, 500, 120, 0.05)
    queries = random_csr(rng, 20, 120, 0.05)
    index = InvertedIndex.from_csr(docs, doc_ids=[f"doc-{i}" for i in range(500)], metadata={"note": "x"})
    path = tmp_path / "idx"
    index.save(path)
    return index, queries, path


def test_save_load_roundtrip_mmap(built):
    index, queries, path = built
    loaded = InvertedIndex.load(path)
    assert isinstance(loaded.postings.words, np.memmap)
    a, b = index.search(queries, k=20), loaded.search(queries, k=20)
    assert (a.ids == b.ids).all() and (a.scores == b.scores).all()
    assert list(loaded.doc_ids) == list(index.doc_ids)
    assert loaded.metadata == {"note": "x"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "lsr.inverted" and manifest["format_version"] == InvertedIndex.VERSION == 3
    in_memory = InvertedIndex.load(path, mmap=False)
    assert not isinstance(in_memory.postings.words, np.memmap)


def test_truncated_file_is_refused(built):
    _, _, path = built
    f = path / "words.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="words.npy.*truncated"):
        InvertedIndex.load(path)


def test_edited_file_is_refused(built):
    _, _, path = built
    f = path / "weights.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        InvertedIndex.load(path)


def test_edited_manifest_is_refused(built):
    _, _, path = built
    m = json.loads((path / "manifest.json").read_text())
    m["n_postings"] += 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="offsets.npy: ends at"):
        InvertedIndex.load(path)


def test_unverified_load_still_checks_structure(built):
    _, _, path = built
    f = path / "words.npy"
    arr = np.load(f)
    arr[1:-2] = arr[1:-2][::-1].copy()  # same size, scrambled blocks
    np.save(f, arr)
    with pytest.raises(IndexFormatError, match="words.npy: malformed posting block"):
        InvertedIndex.load(path, verify=False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("victim", ["words.npy", "offsets.npy", "weights.npy", "doc_ids.parquet"])
def test_random_bit_flips_never_load_or_crash(built, seed, victim):
    """Flipped bits in any file: the default load refuses them, or the index searches exactly as
    the undamaged one (ids, scores, external ids). ``verify=False`` is the documented opt-out
    (docs/FORMAT.md): it relies on the structural checks, which refuse the damage or yield an
    index that searches without reading out of bounds, with results that may differ."""
    index, queries, path = built
    want = index.search(queries, k=10)
    rng = np.random.default_rng(seed)
    f = path / victim
    data = bytearray(f.read_bytes())
    start = 128 if victim.endswith(".npy") else 0  # the .npy header is checked on its own too
    for _ in range(3):
        data[int(rng.integers(start, len(data)))] ^= 1 << int(rng.integers(0, 8))
    f.write_bytes(bytes(data))
    try:
        loaded = InvertedIndex.load(path)
    except IndexFormatError as exc:
        assert victim in str(exc)
    else:
        got = loaded.search(queries, k=10)
        assert (got.ids == want.ids).all() and (got.scores == want.scores).all()
        assert list(loaded.doc_ids) == list(index.doc_ids)
    try:
        unchecked = InvertedIndex.load(path, verify=False)
    except IndexFormatError as exc:  # damaged offsets show as blocks that do not decode
        assert victim in str(exc) or "words.npy" in str(exc)
    else:
        got = unchecked.search(queries, k=10)
        assert got.ids.shape == want.ids.shape and ((got.ids >= -1) & (got.ids < index.n_docs)).all()


@pytest.mark.parametrize("setup", ["missing", "foreign", "garbage_manifest", "other_version", "missing_file"])
def test_foreign_or_broken_directories(tmp_path, built, setup):
    _, _, path = built
    if setup == "missing":
        target = tmp_path / "nope"
        match = "no such index"
    elif setup == "foreign":
        target = tmp_path / "foreign"
        target.mkdir()
        (target / "something.txt").write_text("hello")
        match = "not an lsr index"
    elif setup == "garbage_manifest":
        target = path
        (path / "manifest.json").write_text("{not json")
        match = "corrupt manifest"
    elif setup == "other_version":
        target = path
        m = json.loads((path / "manifest.json").read_text())
        m["format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(m))
        match = "version 99"
    else:
        target = path
        (path / "offsets.npy").unlink()
        match = "missing file offsets.npy"
    with pytest.raises(IndexFormatError, match=match):
        InvertedIndex.load(target)


def test_interrupted_save_keeps_previous_index(built, monkeypatch):
    index, queries, path = built
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = InvertedIndex.from_csr(sp.csr_matrix(np.eye(3, dtype=np.float32)))
    import lsr.index.inverted as inv

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash while writing")

    monkeypatch.setattr(inv, "save_ids", boom)
    with pytest.raises(KeyboardInterrupt):
        other.save(path)
    after = {p.name: p.read_bytes() for p in path.iterdir()}
    assert before == after
    left = [p for p in path.parent.iterdir() if p.name.startswith(".idx")]
    assert left == [path.resolve()], "temporary directory left behind"  # only the current version
    loaded = InvertedIndex.load(path)
    assert (loaded.search(queries, k=5).ids == index.search(queries, k=5).ids).all()


def test_save_refuses_to_overwrite_foreign_directory(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete")
    index = InvertedIndex.from_csr(sp.csr_matrix(np.eye(2, dtype=np.float32)))
    with pytest.raises(FileExistsError, match="not an lsr.inverted index"):
        index.save(target)
    assert (target / "thesis.tex").read_text() == "do not delete"
    index.save(tmp_path / "fresh")
    with pytest.raises(FileExistsError, match="overwrite"):
        index.save(tmp_path / "fresh", overwrite=False)


@pytest.mark.parametrize("quantize", [None, 8])
def test_version_2_directories_are_read(tmp_path, quantize):
    """A directory in the previous, uncompressed layout (written here by hand from the decoded
    arrays) loads, is compressed in memory, and searches like the index it came from."""
    from lsr.io.manifest import save_array, save_ids, write_manifest
    from lsr.index.inverted import _forward

    rng = np.random.default_rng(11)
    docs = random_csr(rng, 400, 90, 0.06)
    if quantize:
        docs.data = np.abs(docs.data) + 0.01
    queries = random_csr(rng, 15, 90, 0.08)
    index = InvertedIndex.from_csr(docs, quantize=quantize, forward=True)
    offsets, post_docs, post_w = index.decode()
    np.testing.assert_array_equal(np.diff(offsets), np.diff(sp.csc_matrix(docs).indptr))
    path = tmp_path / "v2"
    path.mkdir()
    fwd = _forward(offsets, post_docs, post_w, docs.shape[0])
    arrays = {"offsets": offsets, "postings_docs": post_docs, "postings_weights": post_w,
              "forward_indptr": fwd[0], "forward_terms": fwd[1], "forward_weights": index.fwd_weights}
    for name, arr in arrays.items():
        save_array(path, name + ".npy", arr)
    save_ids(path, "doc_ids.parquet", index.doc_ids)
    write_manifest(path, "lsr.inverted", 2, {"n_docs": 400, "vocab_size": 90, "n_postings": int(offsets[-1]),
                                             "quantization": index.quantization, "metadata": {}})
    loaded = InvertedIndex.load(path)
    assert loaded.has_forward and loaded.quantization == index.quantization
    for mode in ("exact", "approximate"):
        a, b = index.search(queries, k=10, mode=mode), loaded.search(queries, k=10, mode=mode)
        assert (a.ids == b.ids).all() and (a.scores == b.scores).all()


@pytest.mark.parametrize("damage", ["indptr", "terms", "order"])
def test_damaged_forward_copy_is_refused(tmp_path, damage):
    """The stored doc-major copy is indexed unchecked by the kernels, so load refuses rows that
    do not increase, term ids beyond the vocabulary and unsorted rows (even with verify=False)."""
    rng = np.random.default_rng(5)
    docs = random_csr(rng, 300, 40, 0.15)
    InvertedIndex.from_csr(docs, quantize=8, forward=True).save(tmp_path / "ix")
    name = "forward_indptr.npy" if damage == "indptr" else "forward_terms.npy"
    arr = np.load(tmp_path / "ix" / name)
    if damage == "indptr":
        arr[1:-1] = 10**12
    elif damage == "terms":
        arr[:] = 60000
    else:
        row = int(np.argmax(np.diff(np.load(tmp_path / "ix" / "forward_indptr.npy")) > 1))
        start = int(np.load(tmp_path / "ix" / "forward_indptr.npy")[row])
        arr[start], arr[start + 1] = arr[start + 1], arr[start]
    np.save(tmp_path / "ix" / name, arr)
    with pytest.raises(IndexFormatError, match="forward_"):
        InvertedIndex.load(tmp_path / "ix", verify=False)


def test_maxscore_at_a_size_that_reaches_it(tmp_path):
    """No monkeypatched thresholds: a corpus above EXACT_SCAN_BELOW documents takes MaxScore in
    exact mode, and above NUMPY_LOAD_POSTINGS postings a loaded index searches with the kernels."""
    rng = np.random.default_rng(11)
    n, v = InvertedIndex.EXACT_SCAN_BELOW + 7000, 3000
    p = 1.0 / (np.arange(v) + 3.0)
    rows = np.repeat(np.arange(n), 16)
    cols = rng.choice(v, size=rows.size, p=p / p.sum())
    docs = sp.csr_matrix((rng.lognormal(-0.7, 0.6, rows.size).astype(np.float32), (rows, cols)), shape=(n, v))
    docs.sum_duplicates()
    assert docs.nnz > InvertedIndex.NUMPY_LOAD_POSTINGS
    queries = random_csr(rng, 40, v, 0.004)
    index = InvertedIndex.from_csr(docs)
    assert_same_topk(index, docs, queries, k=10)
    assert_same_topk(index, docs, queries, k=100, threads=2)
    index.save(tmp_path / "big")
    loaded = InvertedIndex.load(tmp_path / "big")
    a, b = index.search(queries, k=10), loaded.search(queries, k=10)
    assert (a.ids == b.ids).all() and (a.scores == b.scores).all()
    exhaustive = index.search(queries, k=10, mode="exhaustive")
    np.testing.assert_allclose(exhaustive.scores, a.scores, rtol=1e-6)
