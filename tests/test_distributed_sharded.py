"""Sharded collections and sharded search on a local, loopback-only Ray: results equal an unsharded
lsr.Collection over the same documents added in the same order (ids, tie order, scores to 1e-5),
for BM25 (global statistics) and a hybrid bm25 + dense collection, with filters, after adds,
deletes and upserts; a killed shard actor raises ShardError naming the shard.

One Ray instance (2 CPUs, every process on 127.0.0.1, no dashboard) is shared by the module,
started and stopped by a fixture; every test runs under an alarm so a hang fails it.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import deadline, shared_model

import lsr
from lsr.collection.engines.bm25 import BM25Statistics
from lsr.distributed.sharded import SEQUENCE_FIELD, ShardedCollection, shard_name, shard_of
from lsr.errors import CollectionLockedError, ShardError

REPO = Path(__file__).resolve().parents[1]
TEST_SECONDS = 180

WORDS = ("heart disease risk stock market news attack failure blood pressure cancer lung vaccine trial "
         "diet smoking").split()
QUERIES = ["heart risk", "market news heart", "zebra", "blood pressure cancer", "lung", "smoking diet trial",
           "vaccine", "heart heart attack failure"]
FILTERS = [{"g": 1}, {"g": {"$in": [0, 2]}}, {"tag": "b"}]


def _deadline(seconds: int = TEST_SECONDS):
    return deadline(seconds)


@pytest.fixture(autouse=True)
def _bounded():
    with _deadline():
        yield


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep 127.0.0.1 (lsr.distributed.cluster)
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'lsr[ray]'")
    import ray
    from ray._private.services import get_node_ip_address

    assert get_node_ip_address() == "127.0.0.1", "ray was imported before the loopback setting"
    with _deadline():
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        yield ray
    finally:
        ray.shutdown()


def _corpus(n: int, seed: int, prefix: str = "d") -> list[dict]:
    """Random short texts, a third of them repeated (so equal scores, ties, occur)."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7))) for _ in range(n - n // 3)]
    texts += texts[: n // 3]
    return [{"_id": f"{prefix}{i}", "text": t, "metadata": {"g": i % 3, "tag": "ab"[i % 2]}}
            for i, t in enumerate(texts)]


def _same(ref, got, tol: float = 1e-5) -> None:
    """Same shape, same ids in the same order, scores within tol."""
    assert got.ids.shape == ref.ids.shape
    for q in range(ref.ids.shape[0]):
        a, b = ref.hits(q), got.hits(q)
        assert [d for d, _ in b] == [d for d, _ in a], (q, a, b)
        np.testing.assert_allclose([s for _, s in b], [s for _, s in a], rtol=0, atol=tol)


def _same_up_to_near_ties(ref, got, tol: float = 1e-5) -> None:
    """As :func:`_same`, except that documents whose reference scores lie within ``tol`` of each
    other may come in either order: a model encodes a document slightly differently (about 1e-7)
    in another batch, and shards encode other batches, so near-ties of model scores can swap."""
    assert got.ids.shape == ref.ids.shape
    for q in range(ref.ids.shape[0]):
        a, b = ref.hits(q), got.hits(q)
        assert len(a) == len(b), (q, a, b)
        np.testing.assert_allclose([s for _, s in b], [s for _, s in a], rtol=0, atol=tol)
        start = 0
        for j in range(1, len(a) + 1):  # groups of consecutive reference scores within tol
            if j == len(a) or abs(a[j][1] - a[j - 1][1]) > tol:
                if j == len(a):  # the last group may continue past k: only its size is known
                    break
                assert {d for d, _ in a[start:j]} == {d for d, _ in b[start:j]}, (q, a, b)
                start = j


def _has_ties(res) -> bool:
    """Whether some query's top-k holds equal scores (the tie order is then under test)."""
    return any(len({s for _, s in res.hits(q)}) < len(res.hits(q)) for q in range(res.ids.shape[0]))


def _changes(full, sharded) -> None:
    """The same adds, deletes and upserts on both."""
    more = _corpus(30, seed=7, prefix="n")
    for col in (full, sharded):
        col.add(more)
        assert col.delete(["d3", "d7", "n2", "nope"]) == 3
        col.upsert([{"_id": "d1", "text": "heart heart risk", "metadata": {"g": 1, "tag": "b"}},
                    {"_id": "x9", "text": "heart risk", "metadata": {"g": 0, "tag": "b"}},
                    {"_id": "n5", "text": more[5]["text"], "metadata": {"g": 2, "tag": "a"}}])


def test_routing_and_driver_writes_without_ray(tmp_path):
    """add/upsert/delete/get/count on the driver in a process that never imports ray; every
    document in the shard its id hashes to; the sequence hidden from get."""
    script = f"""
import sys
from lsr.distributed.sharded import ShardedCollection
c = ShardedCollection.create({str(tmp_path / 'sh')!r}, 3)
c.add([{{"_id": f"d{{i}}", "text": f"word{{i}} common"}} for i in range(40)])
c.upsert([{{"_id": "d0", "text": "changed", "metadata": {{"a": 1}}}}])
print(c.delete(["d1", "d2", "missing"]), c.count(), c.get(["d0", "d1"]), "ray" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == ("2 38 [{'_id': 'd0', 'title': '', 'text': 'changed', 'metadata': {'a': 1}}, "
                                         "None] False")
    c = ShardedCollection.open(tmp_path / "sh", readonly=True)
    for i, shard in enumerate(c.shards):  # each shard holds exactly the ids that hash to it
        assert shard.path.name == shard_name(i)
        assert sorted(shard.ids()) == sorted(
            d for d in (f"d{j}" for j in range(40) if j not in (1, 2))
            if int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "big") % 3 == i)
        assert all(shard_of(d, 3) == i for d in shard.ids())
    seqs = {d: s.get([d])[0]["metadata"][SEQUENCE_FIELD] for s in c.shards for d in s.ids()}
    assert seqs["d0"] == 40 and sorted(v for k, v in seqs.items() if k != "d0") == list(range(3, 40))
    assert sum(len(s) for s in c.shards) == 38
    w1 = ShardedCollection.open(tmp_path / "sh")  # a writer holds every shard's write.lock
    try:
        with pytest.raises(CollectionLockedError):
            ShardedCollection.open(tmp_path / "sh")
    finally:
        w1.close()
    with pytest.raises(ValueError, match="already in the collection"):
        with ShardedCollection.open(tmp_path / "sh") as w:
            w.add([{"_id": "new1", "text": "x"}, {"_id": "d5", "text": "y"}])
    assert c.get(["new1"]) == [None]  # refused before any shard changed
    with pytest.raises(ValueError, match="reserved"):
        with ShardedCollection.open(tmp_path / "sh") as w:
            w.add([{"_id": "z", "text": "x", "metadata": {SEQUENCE_FIELD: 3}}])


def test_bm25_statistics_hook_checks_its_input(tmp_path):
    with lsr.Collection.create(tmp_path / "c", "bm25") as col:
        col.add([{"_id": "a", "text": "heart disease"}, {"_id": "b", "text": "heart"}])
        with pytest.raises(ValueError, match="no df for query term"):
            col.search("heart disease", statistics=BM25Statistics(10, 30, {"heart": 5}))
        with pytest.raises(ValueError, match="below this collection"):
            col.search("heart", statistics=BM25Statistics(10, 30, {"heart": 1}))
        with pytest.raises(ValueError, match="fewer documents"):
            col.search("heart", statistics=BM25Statistics(1, 30, {"heart": 2}))
        own = col.search("heart disease", k=2)
        same = col.search("heart disease", k=2, statistics=BM25Statistics(2, 3, {"heart": 2, "diseas": 1}))
        _same(own, same, tol=0)


@pytest.fixture(scope="module")
def bm25_pair(ray_local, tmp_path_factory):
    """A 4-shard BM25 collection built on Ray, and the unsharded one over the same documents."""
    from lsr.distributed.sharded import build_sharded

    d = tmp_path_factory.mktemp("bm25")
    docs = _corpus(160, seed=1)
    sharded = build_sharded(d / "sh", docs, 4, "bm25")
    full = lsr.Collection.create(d / "full", "bm25")
    full.add(docs)
    yield full, sharded
    full.close()
    sharded.close()


def test_bm25_sharded_equals_unsharded(bm25_pair):
    from lsr.distributed.search import ShardedSearcher

    full, sharded = bm25_pair
    assert sharded.count() == len(full) == 160 and all(len(s) > 20 for s in sharded.shards)
    with ShardedSearcher(sharded.path, batch_size=3) as searcher:
        ref = full.search(QUERIES, k=12)
        assert _has_ties(ref)
        _same(ref, searcher.search(QUERIES, k=12))
        for f in FILTERS:
            _same(full.search(QUERIES, k=12, filter=f), searcher.search(QUERIES, k=12, filter=f))
        got = searcher.search(QUERIES[:2], k=5, fields=["metadata", "text"])
        assert got.fields == full.search(QUERIES[:2], k=5, fields=["metadata", "text"]).fields
        _same(full.search(QUERIES, k=1000), searcher.search(QUERIES, k=1000))  # k capped at the live documents

        # per-shard statistics would rank differently: shard 0 alone scores otherwise
        shard0 = sharded.shards[0]
        own, glob = shard0.search(QUERIES, k=5), searcher.search(QUERIES, k=5)
        by_id = {d: s for q in range(len(QUERIES)) for d, s in glob.hits(q)}
        diffs = [abs(s - by_id[d]) for q in range(len(QUERIES)) for d, s in own.hits(q) if d in by_id]
        assert diffs and max(diffs) > 1e-3

        _changes(full, sharded)  # the searcher's shards refresh at the next search
        ref = full.search(QUERIES, k=12)
        assert _has_ties(ref)
        _same(ref, searcher.search(QUERIES, k=12))
        for f in FILTERS:
            _same(full.search(QUERIES, k=12, filter=f), searcher.search(QUERIES, k=12, filter=f))
        sharded.optimize()  # merged shards: the same order
        _same(ref, searcher.search(QUERIES, k=12))


def test_killed_shard_actor_raises_naming_the_shard(bm25_pair, tmp_path):
    from lsr.distributed.search import ShardedSearcher

    full, sharded = bm25_pair
    with ShardedSearcher(sharded.path) as searcher:
        searcher.search(QUERIES, k=5)
        os.kill(searcher.pids()[1], signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(ShardError, match=r"^shard 1 \(.*shard_001\): its actor died") as info:
            searcher.search(QUERIES, k=5)
        assert info.value.shard == 1
        part = searcher.search(QUERIES, k=8, allow_partial=True)
        assert part.missing_shards == (1,) and part.partial
        # reference: one collection over the other shards' documents, in sequence order
        docs = sorted((d for i, s in enumerate(sharded.shards) if i != 1 for d in s.get(s.ids())),
                      key=lambda d: d["metadata"][SEQUENCE_FIELD])
        with lsr.Collection.create(tmp_path / "rest", "bm25") as rest:
            rest.add(docs)
            _same(rest.search(QUERIES, k=8), part)


def test_hybrid_bm25_dense_sharded_equals_unsharded(ray_local, tmp_path):
    from lsr.distributed.search import ShardedSearcher

    model = str(shared_model("all-MiniLM-L6-v2"))
    options = {"components": f"bm25,dense={model}", "depth": 15}
    docs = _corpus(60, seed=3)
    full = lsr.Collection.create(tmp_path / "full", "hybrid", **options)
    full.add(docs)
    # 2 shards: each shard actor loads the model (the 4-shard merge is under test with BM25)
    with ShardedCollection.create(tmp_path / "sh", 2, "hybrid", **options) as sharded, \
            ShardedSearcher(sharded.path) as searcher:
        sharded.add(docs)
        ref = full.search(QUERIES, k=10)
        _same_up_to_near_ties(ref, searcher.search(QUERIES, k=10))
        _same_up_to_near_ties(full.search(QUERIES, k=10, filter=FILTERS[0]),
                              searcher.search(QUERIES, k=10, filter=FILTERS[0]))
        got = searcher.search(QUERIES[:2], k=4, fields=["text"])
        assert [got.documents(q)[i]["text"] == full.get([got.documents(q)[i]["_id"]])[0]["text"]
                for q in range(2) for i in range(4)] == [True] * 8
        _changes(full, sharded)
        _same_up_to_near_ties(full.search(QUERIES, k=10), searcher.search(QUERIES, k=10))
        _same_up_to_near_ties(full.search(QUERIES, k=10, filter=FILTERS[2]),
                              searcher.search(QUERIES, k=10, filter=FILTERS[2]))
    full.close()


@pytest.mark.slow
def test_splade_built_by_ray_tasks_equals_unsharded(ray_local, tmp_path):
    """splade-tiny, 4 shards encoded by Ray tasks (one per shard) and searched by 4 actors."""
    from lsr.distributed.search import ShardedSearcher
    from lsr.distributed.sharded import build_sharded

    options = {"model": str(shared_model("splade-tiny"))}
    docs = _corpus(60, seed=5)
    full = lsr.Collection.create(tmp_path / "full", "splade", **options)
    full.add(docs)
    with build_sharded(tmp_path / "sh", docs, 4, "splade", **options) as sharded, \
            ShardedSearcher(sharded.path) as searcher:
        _same_up_to_near_ties(full.search(QUERIES, k=10), searcher.search(QUERIES, k=10))
        _same_up_to_near_ties(full.search(QUERIES, k=10, filter=FILTERS[1]),
                              searcher.search(QUERIES, k=10, filter=FILTERS[1]))
        _changes(full, sharded)
        _same_up_to_near_ties(full.search(QUERIES, k=10), searcher.search(QUERIES, k=10))
    full.close()



def test_pre_encoded_hybrid_sharded_is_identical_to_unsharded(ray_local, tmp_path):
    """bm25 + dense with the dense vectors encoded once (lsr.EncodedDocuments) and given to both
    builds, queries encoded once at the driver: the same ids in the same order (duplicates' ties
    included) and the same scores, with filters, and after adds, deletes and upserts that bring
    their own vectors. (The sparse side: tests/test_distributed_encode.py, on two nodes.)"""
    from lsr.collection.docstore import contents
    from lsr.collection.encoded import EncodedDocuments
    from lsr.distributed.search import ShardedSearcher
    from lsr.distributed.sharded import build_sharded

    options = {"components": f"bm25,dense={shared_model('all-MiniLM-L6-v2')}", "depth": 15}
    full = lsr.Collection.create(tmp_path / "full", "hybrid", **options)
    dense = full.engine.components[1]

    def encoded(docs: list[dict]) -> list:
        texts = contents([{"title": "", **d} for d in docs])
        return [None, EncodedDocuments([d["_id"] for d in docs], dense.encoder.encode_documents(texts))]

    docs = _corpus(60, seed=5)
    more = _corpus(20, seed=8, prefix="n")
    upserts = [{"_id": "d1", "text": "heart heart risk", "metadata": {"g": 1, "tag": "b"}},
               {**docs[7], "_id": "x9"}]
    full.add(docs, vectors=encoded(docs))
    # batches of 3 queries: each batch's rows of the call's query vectors go to the shards
    with build_sharded(tmp_path / "sh", docs, 2, "hybrid", vectors=encoded(docs), **options) as sharded, \
            ShardedSearcher(sharded.path, batch_size=3) as searcher:
        assert _has_ties(full.search(QUERIES, k=10))
        for flt in (None, FILTERS[0], FILTERS[2]):
            _same(full.search(QUERIES, k=10, filter=flt), searcher.search(QUERIES, k=10, filter=flt), tol=0)
        for col in (full, sharded):
            col.add(more, vectors=encoded(more))
            assert col.delete(["d3", "n2"]) == 2
            col.upsert(upserts, vectors=encoded(upserts))
        for flt in (None, FILTERS[1]):
            _same(full.search(QUERIES, k=10, filter=flt), searcher.search(QUERIES, k=10, filter=flt), tol=0)
    full.close()
