"""Collections built from pre-encoded vectors (lsr.EncodedDocuments, e.g. `lsr encode` shards):
the segments hold exactly the given vectors, search equals brute force over them, the batching of
the add does not change any result, and vectors that do not fit are refused before anything is
written."""
from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import shared_model

import lsr
from lsr.collection.encoded import EncodedDocuments

WORDS = "heart disease risk stock market news attack blood pressure cancer lung vaccine trial diet".split()
QUERIES = ["heart risk", "market news", "blood pressure cancer", "vaccine trial diet", "zebra"]


def _docs(n: int = 40, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n - n // 4 - 1)]
    texts += texts[: n // 4] + ["   "]  # duplicates (equal scores) and a blank document
    return [{"_id": f"d{i}", "title": "", "text": t, "metadata": {"g": i % 3}} for i, t in enumerate(texts)]


def _stored(col) -> list:
    """Each segment's engine part, in collection order."""
    return [s.part for s in col.snapshot.segments]


def _brute(q: np.ndarray, v: np.ndarray, live: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Top-k by (score desc, position): each pair's product on its own, in float64 (a matrix
    product's last bits depend on the matrix layout, so duplicate rows could score apart)."""
    out = []
    q, v = np.asarray(q, np.float64), np.asarray(v, np.float64)
    for qrow in q:
        row = [float(np.dot(qrow, v[j])) for j in range(v.shape[0])]
        order = sorted((j for j in range(v.shape[0]) if live[j]), key=lambda j: (-row[j], j))
        out.append([(j, float(row[j])) for j in order[:k]])
    return out


@pytest.fixture(scope="module")
def splade_model() -> str:
    return str(shared_model("splade-tiny"))


def test_sparse_vectors_from_lsr_encode_shards(tmp_path, splade_model):
    from lsr.encoders.splade import SpladeEncoder
    from lsr.io.shards import encode_corpus_to_shards

    docs = _docs()
    ids, texts = [d["_id"] for d in docs], [d["text"] for d in docs]
    enc = SpladeEncoder(splade_model)
    encode_corpus_to_shards(enc, ids, texts, tmp_path / "shards", shard_size=7)
    vectors = EncodedDocuments.from_shards(tmp_path / "shards")
    assert len(vectors) == len(docs) and vectors.kind == "sparse" and vectors.config["model"] == splade_model
    reversed_docs = docs[::-1]  # added in another order than encoded: looked up by id
    col = lsr.Collection.create(tmp_path / "col", "splade", model=splade_model)
    assert col.add(reversed_docs, vectors=vectors, batch_size=9) == len(docs)
    assert len(col.snapshot.segments) >= 2
    # the segments hold exactly the given vectors (the blank document emptied, as an encoding does)
    got = np.vstack([p.index.to_csr().toarray() for p in _stored(col)])
    want = vectors.vectors.toarray()[[int(d["_id"][1:]) for d in reversed_docs]]
    want[[i for i, d in enumerate(reversed_docs) if not d["text"].strip()]] = 0
    np.testing.assert_array_equal(got, want)
    # search = brute force over these vectors, ties by collection order
    q = col.engine.encode_queries(QUERIES)
    import scipy.sparse as sp

    qd = sp.csr_matrix((q.data, q.indices, q.indptr), shape=(len(QUERIES), q.vocab_size)).toarray()
    ref = _brute(qd, want, np.ones(len(docs), bool), 8)
    res = col.search(QUERIES, k=8)
    for r, hits in enumerate(ref):
        hits = [(reversed_docs[j]["_id"], s) for j, s in hits if s > 0]
        assert [d for d, _ in res.hits(r)] == [d for d, _ in hits]
        np.testing.assert_allclose([s for _, s in res.hits(r)], [s for _, s in hits], rtol=1e-6)
    # the search option query_vectors: the engine's own encoding of the queries, given back
    same = col.search(QUERIES, k=8, query_vectors=col.engine.query_vectors(QUERIES))
    np.testing.assert_array_equal(same.scores, res.scores)
    assert list(same.doc_ids) == list(res.doc_ids)
    with pytest.raises(ValueError, match="query_vectors: 2 rows for 5 queries"):
        col.search(QUERIES, query_vectors=col.engine.query_vectors(QUERIES[:2]))
    # deletes, upserts with vectors and merging keep the vectors as given
    col.delete(["d3", "d5"])
    col.upsert([docs[0]], vectors=vectors)
    col.optimize()
    (part,) = _stored(col)
    order = [d for d in col.ids()]
    want2 = vectors.vectors.toarray()[[int(i[1:]) for i in order]]
    want2[[j for j, i in enumerate(order) if not docs[int(i[1:])]["text"].strip()]] = 0
    np.testing.assert_array_equal(part.index.to_csr().toarray(), want2)
    col.close()


def test_dense_and_hybrid_vectors_make_results_independent_of_batching(tmp_path):
    from lsr.encoders.embedding import DenseEncoder

    model = str(shared_model("all-MiniLM-L6-v2"))
    docs = _docs(30, seed=2)
    ids = [d["_id"] for d in docs]
    enc = DenseEncoder(model)
    vectors = EncodedDocuments(ids, enc.encode_documents([d["text"] for d in docs]), enc.config())
    dense = lsr.Collection.create(tmp_path / "dense", "dense", model=model)
    dense.add(docs, vectors=vectors, batch_size=11)
    np.testing.assert_array_equal(np.vstack([np.asarray(p.vectors) for p in _stored(dense)]), vectors.vectors)
    q = dense.engine.encoder.encode_queries(QUERIES)
    ref = _brute(np.asarray(q), vectors.vectors, np.ones(len(docs), bool), 6)
    res = dense.search(QUERIES, k=6)
    for r, hits in enumerate(ref):
        assert [d for d, _ in res.hits(r)] == [ids[j] for j, _ in hits]
        np.testing.assert_allclose([s for _, s in res.hits(r)], [s for _, s in hits], atol=1e-6)
    same = dense.search(QUERIES, k=6, query_vectors=dense.engine.query_vectors(QUERIES))
    np.testing.assert_array_equal(same.scores, res.scores)
    with pytest.raises(ValueError, match="dimension"):
        dense.search(QUERIES, query_vectors=np.zeros((len(QUERIES), 7), np.float32))
    dense.close()

    options = {"components": f"bm25,dense={model}", "depth": 12}
    results = []
    for name, batch in (("h1", None), ("h2", 4)):
        with lsr.Collection.create(tmp_path / name, "hybrid", **options) as col:
            col.add(docs, vectors=[None, vectors], batch_size=batch)
            results.append((col.search(QUERIES, k=8), col.search(QUERIES, k=8, filter={"g": 1})))
    for a, b in zip(*results):  # bit for bit: the same vectors, whatever the segments
        np.testing.assert_array_equal(a.scores, b.scores)
        assert [a.hits(r) for r in range(len(QUERIES))] == [b.hits(r) for r in range(len(QUERIES))]


def test_vectors_that_do_not_fit_are_refused_before_anything_is_written(tmp_path, splade_model):
    docs = _docs(12)
    ids = [d["_id"] for d in docs]
    col = lsr.Collection.create(tmp_path / "col", "splade", model=splade_model)
    vocab = col.engine.encoder.vocab_size
    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    good = sp.random(len(ids), vocab, density=0.01, format="csr", random_state=0, dtype=np.float32)
    cases = [
        (EncodedDocuments(ids[:-1], good[:-1], source="part.npz"), f"part.npz: no vector for document '{ids[-1]}'"),
        (EncodedDocuments(ids, rng.random((len(ids), 8))), "dense vectors, but a splade collection"),
        (EncodedDocuments(ids, good[:, :100]), "vocabulary 100"),
        (EncodedDocuments(ids, good, {"model": "someone/other-splade"}), "encoded with model='someone/other-splade'"),
    ]
    generation = col.generation
    for vectors, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            col.add(docs, vectors=vectors, batch_size=5)
        assert col.generation == generation and len(col) == 0
        assert not any((col.path / "segments").iterdir())
    with pytest.raises(TypeError, match="EncodedDocuments"):
        col.add(docs, vectors=good)
    col.add(docs, vectors=EncodedDocuments(ids, good))
    assert len(col) == len(docs)
    col.close()
    bad = good.copy()
    bad.data[bad.indptr[4]] = np.nan  # the first entry of document 4 (row 4 is not empty at this density)
    assert bad.indptr[5] > bad.indptr[4]
    with pytest.raises(ValueError, match=f"part.npz: the vector of document '{ids[4]}' is not finite"):
        EncodedDocuments(ids, bad, source="part.npz")
    dense_bad = rng.random((len(ids), 8))
    dense_bad[7, 3] = np.inf
    with pytest.raises(ValueError, match=f"document '{ids[7]}' is not finite"):
        EncodedDocuments(ids, dense_bad)
    with pytest.raises(ValueError, match="appears twice"):
        EncodedDocuments(["a", "a"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 vectors for 2 ids"):
        EncodedDocuments(["a", "b"], np.zeros((3, 3)))
    with lsr.Collection.create(tmp_path / "bm25", "bm25") as bm25:
        with pytest.raises(ValueError, match="bm25 collection computes"):
            bm25.add(docs, vectors=EncodedDocuments(ids, good))
    model = str(shared_model("all-MiniLM-L6-v2"))
    with lsr.Collection.create(tmp_path / "hy", "hybrid", components=f"bm25,dense={model}") as hy:
        with pytest.raises(ValueError, match="one entry"):
            hy.add(docs, vectors=[EncodedDocuments(ids, rng.random((len(ids), 384)))])
        with pytest.raises(ValueError, match="computes its documents"):
            hy.add(docs, vectors=[EncodedDocuments(ids, good), None])
        assert len(hy) == 0


def test_cli_index_and_add_take_lsr_encode_shards(tmp_path, tiny_beir, splade_model):
    import json

    from click.testing import CliRunner

    from lsr.cli import main

    runner = CliRunner()
    shards = tmp_path / "shards"
    res = runner.invoke(main, ["encode", str(tiny_beir), str(shards), "-r", "splade", "-m", splade_model,
                               "--shard-size", "3"])
    assert res.exit_code == 0, res.output
    vectors = EncodedDocuments.from_shards(shards)
    # lsr index CORPUS COLLECTION --doc-vectors SHARDS: the collection holds exactly those vectors
    col_dir = tmp_path / "col"
    res = runner.invoke(main, ["index", str(tiny_beir), str(col_dir), "-r", "splade", "-m", splade_model,
                               "--doc-vectors", str(shards)])
    assert res.exit_code == 0, res.output
    with lsr.Collection.open(col_dir, readonly=True) as col:
        got = np.vstack([p.index.to_csr().toarray() for p in _stored(col)])
        np.testing.assert_array_equal(got, vectors.vectors[[vectors.ids.index(i) for i in col.ids()]].toarray())
    # lsr add --doc-vectors: new documents by id; one without a vector stops the add, nothing changes
    docs = tmp_path / "more.jsonl"
    first = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[0])
    docs.write_text(json.dumps({**first, "text": first["text"] + " again"}) + "\n"
                    + json.dumps({"_id": "new-doc", "text": "heart"}) + "\n")
    with lsr.Collection.open(col_dir, readonly=True) as col:
        generation = col.generation
    res = runner.invoke(main, ["add", str(col_dir), str(docs), "--doc-vectors", str(shards)])
    assert res.exit_code == 1 and "no vector for document 'new-doc'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    with lsr.Collection.open(col_dir, readonly=True) as col:
        assert col.generation == generation
    docs.write_text(json.dumps({**first, "text": first["text"] + " again"}) + "\n")
    res = runner.invoke(main, ["add", str(col_dir), str(docs), "--doc-vectors", str(shards)])
    assert res.exit_code == 0, res.output
    # a BM25 collection has no vectors to take
    res = runner.invoke(main, ["index", str(tiny_beir), str(tmp_path / "bm"), "--doc-vectors", str(shards)])
    assert res.exit_code == 1 and "bm25 collection computes" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "bm").exists()


def test_sharded_add_refuses_vectors_before_any_shard_changes(tmp_path):
    """Driver writes (no Ray): a document without a vector, or vectors of another width, leave every
    shard and the sequence counter as they were."""
    from lsr.distributed.sharded import ShardedCollection, read_manifest, shard_of

    model = str(shared_model("all-MiniLM-L6-v2"))
    docs = _docs(12)
    ids = [d["_id"] for d in docs]
    rng = np.random.default_rng(1)
    with ShardedCollection.create(tmp_path / "sh", 2, "dense", model=model) as sc:
        last = next(i for i in reversed(ids) if shard_of(i, 2) == 1)
        partial = EncodedDocuments([i for i in ids if i != last], rng.random((len(ids) - 1, 384)))
        for vectors, message in ((partial, f"no vector for document '{last}'"),
                                 (EncodedDocuments(ids, rng.random((len(ids), 12))), "dimension 12")):
            with pytest.raises(ValueError, match=message):
                sc.add(docs, vectors=vectors)
            assert [len(s) for s in sc.shards] == [0, 0] and read_manifest(sc.path)["next_sequence"] == 0
        v = rng.random((len(ids), 384)).astype(np.float32)
        assert sc.add(docs, vectors=EncodedDocuments(ids, v)) == len(ids)
        got = sc.shards[shard_of(ids[3], 2)].snapshot.segments[0]
        stored = np.asarray(got.part.vectors)[list(got.ids).index(ids[3])]
        np.testing.assert_array_equal(stored, v[3])
    # build_sharded checks the vectors on the driver, before Ray starts or any task loads a model
    import importlib.util
    import os

    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs the ray extra: pip install 'lsr[ray]'")
    # ray reads this when first imported (build_sharded imports it): loopback only, as the Ray tests' fixtures
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from lsr.distributed.sharded import build_sharded

    with pytest.raises(ValueError, match="dimension 12"):
        build_sharded(tmp_path / "built", docs, 2, "dense", vectors=EncodedDocuments(ids, rng.random((len(ids), 12))),
                      model=model)
    assert not (tmp_path / "built").exists() and list(tmp_path.iterdir()) == [tmp_path / "sh"]
    from lsr.distributed.search import ShardedSearcher

    with pytest.raises(ValueError, match="encode_queries must be 'driver' or 'shards'"):
        ShardedSearcher(tmp_path / "sh", encode_queries="everywhere")  # refused before Ray starts
