"""Distributed encoding on a two-node Ray cluster on loopback: the same shards as `lsr encode` in one
process (BM25 and SPLADE), a SIGKILLed worker, resuming, and lsr without the ray extra.

One cluster (two nodes of one CPU each, every process on 127.0.0.1, no dashboard) is shared by the
module, started and stopped by a fixture; every test runs under an alarm so a hang fails it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import deadline, beir_dataset, shared_model

from lsr.io.readers import read_corpus
from lsr.io.shards import encode_corpus_to_shards, load_shards, read_progress

REPO = Path(__file__).resolve().parents[1]
TEST_SECONDS = 240  # per test; Ray's start-up on two busy cores takes up to a minute


def _deadline(seconds: int = TEST_SECONDS):
    return deadline(seconds)


@pytest.fixture(autouse=True)
def _bounded():
    with _deadline():
        yield


@pytest.fixture(scope="module")
def cluster():
    """A two-node Ray cluster on 127.0.0.1, this process connected to it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep 127.0.0.1 (lsr.distributed.cluster)
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'lsr[ray]'")
    import ray
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster

    # Ray read the variable when first imported: if that was before, nodes would use another address
    assert get_node_ip_address() == "127.0.0.1", "ray was imported before the loopback setting"

    c = Cluster(initialize_head=False)
    try:
        with _deadline():
            c.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)  # the head
            c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            ray.init(address=c.address, _node_ip_address="127.0.0.1", log_to_driver=False)
            nodes = [n for n in ray.nodes() if n["Alive"]]
            assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    """The first 24 scifact documents as a JSONL corpus."""
    src = beir_dataset("scifact") / "corpus.jsonl"
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(src) as f:
        path.write_text("".join(next(f) for _ in range(24)))
    corpus = read_corpus(path)
    return path, corpus.ids, corpus.all_contents()


def _same_directory(a: Path, b: Path) -> None:
    """Byte-equal files (so equal arrays, ids and progress), and equal arrays once loaded."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert read_progress(a) == read_progress(b)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    (ia, va), (ib, vb) = load_shards(a), load_shards(b)
    assert ia == ib
    for part in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(va, part), getattr(vb, part))


def _bm25(texts):
    from lsr.encoders.bm25 import BM25Encoder

    enc = BM25Encoder()
    enc.fit_documents(texts)
    return enc


@pytest.fixture(scope="module")
def bm25_corpus():
    corpus = read_corpus(beir_dataset("scifact") / "corpus.jsonl")
    ids, texts = corpus.ids[:300], corpus.all_contents()[:300]
    return ids, texts, _bm25(texts)


def test_bm25_on_two_nodes_equals_single_process(cluster, bm25_corpus, tmp_path):
    from lsr.distributed import encode_corpus_distributed

    ids, texts, enc = bm25_corpus
    encode_corpus_to_shards(enc, ids, texts, tmp_path / "one", shard_size=37)  # 9 shards, the last of 4
    encode_corpus_distributed(enc, ids, texts, tmp_path / "ray", shard_size=37, workers=2)
    _same_directory(tmp_path / "one", tmp_path / "ray")
    # and the vectors are BM25's own fit, not only each other's
    _, vectors = load_shards(tmp_path / "ray")
    direct = _bm25(texts).fit_documents(texts)
    assert np.array_equal(vectors.indptr, direct.indptr) and np.array_equal(vectors.data, direct.data)


@pytest.fixture(scope="class")
def pool(cluster, bm25_corpus):
    """Two BM25 actors (they load no model) for the tests of one class, closed after them."""
    from lsr.distributed import EncoderPool

    with _deadline():
        pool = EncoderPool(bm25_corpus[2], workers=2, max_restarts=2)
    try:
        yield pool
    finally:
        pool.close()


class TestOnePool:
    """Resuming and a killed worker, on one pool."""

    def test_resume_skips_finished_shards(self, pool, bm25_corpus, tmp_path):
        from lsr.distributed import encode_corpus_distributed

        ids, texts, enc = bm25_corpus
        encode_corpus_to_shards(enc, ids, texts, tmp_path / "one", shard_size=30)

        class Stop(Exception):
            pass

        def stop_after_three(i, seen=[]):
            seen.append(i)
            if len(seen) == 3:
                raise Stop

        out = tmp_path / "ray"
        with pytest.raises(Stop):
            encode_corpus_distributed(enc, ids, texts, out, shard_size=30, pool=pool, on_shard=stop_after_three)
        finished = {s["shard"] for s in read_progress(out)["shards"]}
        assert len(finished) == 3 and not read_progress(out)["complete"]
        stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.npy")
                  if int(p.name[6:11]) in finished}
        encoded = []
        encode_corpus_distributed(enc, ids, texts, out, shard_size=30, pool=pool, on_shard=encoded.append)
        assert sorted(encoded) == sorted(set(range(10)) - finished)
        assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in ((n, out / n) for n in stamps)} == stamps
        _same_directory(tmp_path / "one", out)

        # a single-process run stopped after two shards is finished by a distributed one
        mixed = tmp_path / "mixed"

        def stop_after_two(i):
            if i == 1:
                raise Stop

        with pytest.raises(Stop):
            encode_corpus_to_shards(enc, ids, texts, mixed, shard_size=30, on_shard=stop_after_two)
        encoded = []
        encode_corpus_distributed(enc, ids, texts, mixed, shard_size=30, pool=pool, on_shard=encoded.append)
        assert sorted(encoded) == list(range(2, 10))
        _same_directory(tmp_path / "one", mixed)

    def test_sigkill_of_a_worker_mid_run_still_gives_the_same_shards(self, pool, bm25_corpus, tmp_path):
        from lsr.distributed import encode_corpus_distributed

        ids, texts, enc = bm25_corpus
        encode_corpus_to_shards(enc, ids, texts, tmp_path / "one", shard_size=10)
        before = pool.pids(timeout=TEST_SECONDS)
        killed = []

        def kill_first_worker(i):
            if not killed:  # the first of 30 shards is in; each actor has shards queued
                os.kill(before[0], signal.SIGKILL)
                killed.append(i)

        encode_corpus_distributed(enc, ids, texts, tmp_path / "ray", shard_size=10, pool=pool,
                                  on_shard=kill_first_worker)
        after = pool.pids(timeout=TEST_SECONDS)
        assert killed and after[0] != before[0] and after[1] == before[1]  # restarted by Ray; the other untouched
        _same_directory(tmp_path / "one", tmp_path / "ray")


@pytest.fixture(scope="module")
def splade_reference(scifact_slice, tmp_path_factory):
    """`lsr encode` of the scifact slice with splade-tiny in this process, 5 documents per shard."""
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from lsr.cli import main

    path, _, _ = scifact_slice
    out = tmp_path_factory.mktemp("splade") / "one"
    res = CliRunner().invoke(main, ["encode", str(path), str(out), "-r", "splade", "-m",
                                    str(shared_model("splade-tiny")), "--shard-size", "5"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow  # two torch starts in actors plus the reference: ~1 min idle; the BM25 tests cover the path by default
def test_splade_cli_with_two_workers_equals_lsr_encode(cluster, scifact_slice, splade_reference, tmp_path):
    from click.testing import CliRunner

    from lsr.cli import main

    path, _, _ = scifact_slice
    res = CliRunner().invoke(main, ["encode", str(path), str(tmp_path / "ray"), "-r", "splade", "-m",
                                    str(shared_model("splade-tiny")), "--shard-size", "5", "--ray",
                                    "--ray-address", cluster.address, "--workers", "2"])
    assert res.exit_code == 0, res.output
    _same_directory(splade_reference, tmp_path / "ray")


def test_without_ray_lsr_works_and_names_the_extra(tiny_beir, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # `import ray` raises ImportError
        import lsr
        from click.testing import CliRunner
        from lsr.cli import main
        import lsr.distributed
        runner = CliRunner()
        res = runner.invoke(main, ["index", {str(tiny_beir)!r}, {str(tmp_path / "idx")!r}])
        assert res.exit_code == 0, res.output
        res = runner.invoke(main, ["search", {str(tmp_path / "idx")!r}, "--query", "heart disease"])
        assert res.exit_code == 0 and "d1" in res.output, res.output
        res = runner.invoke(main, ["encode", {str(tiny_beir)!r}, {str(tmp_path / "enc")!r}, "-r", "splade",
                                   "-m", "any-model", "--ray"])
        print(res.exit_code, res.output)
        try:
            lsr.distributed.encode_corpus_distributed(lsr.BM25Encoder(), [], [], {str(tmp_path / "api")!r})
        except ImportError as exc:
            print("api:", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1 Error: distributed encoding needs Ray; install the ray extra: "
                                  "pip install 'lsr[ray]'"), proc.stdout
    assert "api: distributed encoding needs Ray; install the ray extra: pip install 'lsr[ray]'" in proc.stdout
    assert not (tmp_path / "enc").exists()


def test_importing_lsr_distributed_does_not_import_ray():
    code = "import sys, lsr.distributed.encode, lsr.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_sharded_build_from_encoded_shards_searched_on_two_nodes(cluster, scifact_slice, splade_reference, tmp_path):
    """`lsr encode` shards -> build_sharded (one task per shard, no encoding) -> one actor per node:
    rankings identical to one collection given the same vectors (ids, order, scores bit for bit)."""
    import lsr
    from lsr.distributed import ShardedSearcher, build_sharded
    from lsr.io.readers import read_queries

    path, ids, texts = scifact_slice
    model = str(shared_model("splade-tiny"))
    docs = [{"_id": i, "text": t, "metadata": {"bucket": j % 3}} for j, (i, t) in enumerate(zip(ids, texts))]
    vectors = lsr.EncodedDocuments.from_shards(splade_reference)
    queries = list(read_queries(beir_dataset("scifact") / "queries.jsonl").values())[:12]
    with lsr.Collection.create(tmp_path / "full", "splade", model=model) as full:
        full.add(docs, vectors=vectors)
        refs = [full.search(queries, k=8, filter=f) for f in (None, {"bucket": 1})]
    with build_sharded(tmp_path / "sh", docs, 2, "splade", address=cluster.address, vectors=vectors,
                       model=model) as sharded, \
            ShardedSearcher(sharded.path, address=cluster.address, cpus_per_shard=1, batch_size=5) as searcher:
        assert len(set(searcher.nodes())) == 2  # one shard actor on each node
        for ref, f in zip(refs, (None, {"bucket": 1})):
            got = searcher.search(queries, k=8, filter=f)
            np.testing.assert_array_equal(got.scores, ref.scores)
            assert [got.hits(r) for r in range(len(queries))] == [ref.hits(r) for r in range(len(queries))]
