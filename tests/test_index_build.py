"""Shard-merge index build (lsr.index.build) against InvertedIndex.from_csr on the concatenation."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import InvertedIndex, SparseBatch
from lsr.io.shards import encode_corpus_to_shards
from lsr.index.build import build_index, shards_from_directory

ARRAYS = ("offsets", "term_blocks", "block_last", "block_max", "block_word", "words", "weights")


def random_docs(rng, n, v, nnz):
    rows = np.repeat(np.arange(n), nnz)
    cols = rng.integers(0, v, rows.size) ** 2 % v  # skewed term frequencies, some duplicates
    w = rng.lognormal(-0.7, 0.6, rows.size).astype(np.float32)
    return sp.csr_matrix((w, (rows, cols)), shape=(n, v), dtype=np.float32)


def assert_same(a: InvertedIndex, b: InvertedIndex) -> None:
    assert a.has_forward == b.has_forward
    pairs = [(name, getattr(a.postings, name), getattr(b.postings, name)) for name in ARRAYS]
    pairs.append(("term_max", a.term_max, b.term_max))
    if a.has_forward:
        pairs += [(name, getattr(a, name), getattr(b, name)) for name in ("fwd_indptr", "fwd_terms", "fwd_weights")]
    for name, x, y in pairs:
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.quantization == b.quantization
    assert a.doc_ids.tolist() == b.doc_ids.tolist()


@pytest.mark.parametrize("quantize,forward", [(None, False), (8, False), (8, True), (None, True)])
def test_build_matches_from_csr(tmp_path, quantize, forward):
    rng = np.random.default_rng(3)
    docs = random_docs(rng, 900, 300, 12)
    docs = sp.vstack([docs, sp.csr_matrix((4, 300), dtype=np.float32)]).tocsr()  # trailing empty rows
    cuts = [0, 1, 1, 250, 700, 904]  # includes an empty shard and a one-row shard
    shards = [docs[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    shards[2] = SparseBatch.from_scipy(shards[2])
    ids = [f"d{i}" for i in range(docs.shape[0])]
    ref = InvertedIndex.from_csr(docs, doc_ids=ids, quantize=quantize, forward=forward)
    built = build_index([lambda s=s: s for s in shards], tmp_path / "ix", doc_ids=ids, quantize=quantize,
                        forward=forward)
    assert_same(built, ref)
    # the directory is a regular index: same manifest checks, same search results as save/load
    ref.save(tmp_path / "ref")
    loaded = InvertedIndex.load(tmp_path / "ix", verify=True)
    q = random_docs(rng, 20, 300, 5)
    for mode in ("exact", "approximate"):
        a, b = loaded.search(q, k=10, mode=mode), InvertedIndex.load(tmp_path / "ref").search(q, k=10, mode=mode)
        assert (a.ids == b.ids).all() and (a.scores == b.scores).all()
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_from_shards_directory(tmp_path):
    rng = np.random.default_rng(4)
    docs = random_docs(rng, 230, 64, 8)

    class Encoder:  # the "text" of document i is str(i)
        vocab_size = 64
        vocab = [f"t{i}" for i in range(64)]

        def config(self):
            return {"type": "fake"}

        def encode_documents(self, texts, **_):
            return SparseBatch.from_scipy(docs[[int(t) for t in texts]])

    ids = [f"x{i}" for i in range(230)]
    encode_corpus_to_shards(Encoder(), ids, [str(i) for i in range(230)], tmp_path / "shards", shard_size=50)
    doc_ids, loaders = shards_from_directory(tmp_path / "shards")
    assert doc_ids == ids and len(loaders) == 5
    built = InvertedIndex.from_shards(loaders, tmp_path / "ix", doc_ids=doc_ids, quantize=8)
    assert_same(built, InvertedIndex.from_csr(docs, doc_ids=ids, quantize=8))


def test_bad_shards(tmp_path):
    a = sp.csr_matrix(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="vocabulary size"):
        build_index([a, sp.csr_matrix(np.ones((2, 6), np.float32))], tmp_path / "x")
    with pytest.raises(ValueError, match="positive"):
        build_index([a, -a], tmp_path / "x", quantize=8)
    with pytest.raises(ValueError, match="duplicate"):
        build_index([a], tmp_path / "x", doc_ids=["a", "a"])
    with pytest.raises(TypeError, match="shard 1"):
        build_index([a, np.ones((2, 5))], tmp_path / "x")
    assert not (tmp_path / "x").exists()
