"""Collection storage: random interleavings of add/upsert/delete/merge/reopen against fresh builds,
readers in threads while a writer changes the collection, the write lock, paths and damaged files.

The reference for every state is a fresh collection holding the surviving documents, added in
collection order in one batch (no merges): search (with and without a filter) must return the
same ids, ranks and scores (1e-5 relative); filtered hits are checked against a plain-Python
evaluation of the filter over the stored metadata.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_model
from lsr.collection import Collection, TieredMergePolicy
from lsr.errors import CollectionLockedError, IndexFormatError
from lsr.retrievers.options import BM25Options, DenseOptions, HybridOptions, SpladeOptions


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setenv("LSR_COLLECTION_FSYNC", "0")  # results do not depend on it; the crash tests keep it on

WORDS = ("heart disease blood pressure stroke risk cancer tumour cell gene protein stock market shares "
         "bank interest rate climate carbon ocean river flood vaccine virus trial patients diet sleep").split()
QUERIES = ["heart disease risk", "stock market shares", "gene protein cancer", "ocean flood river", "zzz nothing"]
FILTER = {"$or": [{"lang": "en"}, {"year": {"$gte": 2022}}]}


def _matches(meta: dict) -> bool:
    year = meta.get("year")
    return meta.get("lang") == "en" or (isinstance(year, int) and year >= 2022)


def make_doc(rng: random.Random, doc_id: str) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
    meta = {"lang": rng.choice(["en", "de", "fr"]), "year": rng.randint(2019, 2024)}
    if rng.random() < 0.2:
        meta["tags"] = ["x", rng.choice(["a", "b"])]  # stored, not filterable
    return {"_id": doc_id, "title": rng.choice(["", "Note"]), "text": text, "metadata": meta}


def hits(res, i: int) -> list[tuple[str, float]]:
    return [(d["_id"], d["score"]) for d in res.documents(i)]


def same_hits(a, b) -> bool:
    if [d for d, _ in a] != [d for d, _ in b]:
        return False
    return np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-7)


def fresh(tmp: Path, options, docs: list[dict]) -> Collection:
    path = tmp / f"fresh-{random.random():.12f}"
    col = Collection.create(path, options, merge_policy=None)
    col.add(docs)
    return col


def check_equals_fresh(col: Collection, model: dict[str, dict], tmp: Path, options, k: int = 6) -> None:
    assert col.ids() == list(model)  # collection order: segment order, then position
    assert len(col) == len(model)
    docs = list(model.values())
    ref = fresh(tmp, options, docs) if docs else None
    for flt in (None, FILTER):
        got = col.search(QUERIES, k=k, filter=flt, fields=["metadata", "text"])
        if ref is None:
            assert (got.ids == -1).all()
            continue
        want = ref.search(QUERIES, k=k, filter=flt)
        for i in range(len(QUERIES)):
            assert same_hits(hits(got, i), hits(want, i)), (flt, QUERIES[i], hits(got, i), hits(want, i))
            for d in got.documents(i):  # stored fields come back with the hit
                assert d["metadata"] == model[d["_id"]]["metadata"] and d["text"] == model[d["_id"]]["text"]
                assert flt is None or _matches(d["metadata"])
    if ref is not None:
        shutil.rmtree(ref.path)
        ref.close()


def run_interleaving(tmp: Path, options, seed: int, steps: int, batch: int = 5) -> None:
    rng = random.Random(seed)
    policy = TieredMergePolicy(segments_per_tier=3, floor_docs=4)
    path = tmp / "col"
    col = Collection.create(path, options, merge_policy=policy)
    model: dict[str, dict] = {}
    next_id = 0
    seen_merge = False
    for step in range(steps):
        op = rng.choice(["add", "add", "upsert", "delete", "merge", "reopen"])
        if op == "add" or not model:
            docs = [make_doc(rng, f"d{next_id + j}") for j in range(rng.randint(1, batch))]
            next_id += len(docs)
            col.add(docs)
            model.update((d["_id"], d) for d in docs)
        elif op == "upsert":
            ids = rng.sample(list(model), min(len(model), rng.randint(1, 3))) + [f"d{next_id}"]
            next_id += 1
            docs = [make_doc(rng, i) for i in ids]
            col.upsert(docs)
            for d in docs:
                model.pop(d["_id"], None)
                model[d["_id"]] = d  # a replaced document moves to the end (its new segment)
        elif op == "delete":
            ids = rng.sample(list(model), min(len(model), rng.randint(1, 4))) + ["never-added"]
            assert col.delete(ids) == len(ids) - 1
            for i in ids:
                model.pop(i, None)
        elif op == "merge":
            col.optimize()
            assert len(col.snapshot.segments) <= 1
        else:
            col.close()
            col = Collection.open(path, merge_policy=policy)
        seen_merge |= any(int(s.name[4:]) >= 3 and len(col.snapshot.segments) < step for s in col.snapshot.segments)
        check_equals_fresh(col, model, tmp, options)
    col.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_bm25_interleavings_equal_a_fresh_build(tmp_path, seed):
    run_interleaving(tmp_path, BM25Options(), seed, steps=18)


# dense and hybrid (bm25 + splade) take ~30 s each, mostly model loads for every fresh build: they
# run with -m slow; their engines are compared with fresh retrievers in test_collection_engines.py
@pytest.mark.parametrize("kind", ["splade", pytest.param("dense", marks=pytest.mark.slow),
                                  pytest.param("hybrid", marks=pytest.mark.slow)])
def test_model_engines_interleavings_equal_a_fresh_build(tmp_path, kind):
    options = {
        "splade": lambda: SpladeOptions(model=str(shared_model("splade-tiny"))),
        "dense": lambda: DenseOptions(model=str(shared_model("all-MiniLM-L6-v2"))),
        "hybrid": lambda: HybridOptions(components=f"bm25,splade={shared_model('splade-tiny')}", depth=8),
    }[kind]()
    run_interleaving(tmp_path, options, seed=3, steps=4, batch=4)  # each fresh build loads the model


def test_add_upsert_delete_get_and_errors(tmp_path):
    rng = random.Random(5)
    with Collection.create(tmp_path / "c", "bm25") as col:
        docs = [make_doc(rng, f"d{i}") for i in range(4)]
        assert col.add(docs) == 4
        with pytest.raises(ValueError, match="already in the collection: 'd1'"):
            col.add([make_doc(rng, "d1")])
        with pytest.raises(ValueError, match="more than once in this batch: 'x'"):
            col.add([make_doc(rng, "x"), make_doc(rng, "y"), make_doc(rng, "x")])
        assert col.generation == 1  # refused batches commit nothing
        new = make_doc(rng, "d1")
        col.upsert([new])
        assert col.generation == 2 and len(col) == 4 and col.get(["d1"])[0] == new
        assert col.get(["d0", "nope"])[1] is None
        assert col.delete(["d0", "d0", "nope"]) == 1 and len(col) == 3
        generation = col.generation
        assert col.delete(["nope"]) == 0 and col.generation == generation
        with pytest.raises(ValueError, match="fields must be among"):
            col.search("heart", fields=["body"])
    with pytest.raises(ValueError, match="closed"):
        col.search("heart")
    with pytest.raises(FileExistsError):
        Collection.create(tmp_path / "c", "bm25")


def test_second_writer_is_refused_and_a_killed_writers_lock_taken_over(tmp_path):
    path = tmp_path / "c"
    col = Collection.create(path, "bm25")
    col.add([{"_id": "a", "text": "heart"}])
    with pytest.raises(CollectionLockedError, match=rf"write.lock.*pid {os.getpid()}"):
        Collection.open(path)
    reader = Collection.open(path, readonly=True)
    assert reader.search("heart").hits(0)[0][0] == "a"
    with pytest.raises(ValueError, match="readonly"):
        reader.add([{"_id": "b", "text": "x"}])
    col.close()
    pid = os.fork()
    if pid == 0:  # a writer that dies holding the lock (referenced: a dropped writer releases it)
        writer = Collection.open(path)
        os.kill(os.getpid(), 9)
        writer.close()  # not reached
    os.waitpid(pid, 0)
    holder = json.loads((path / "write.lock").read_text())
    assert holder["pid"] == pid  # the dead writer's record is still there
    with Collection.open(path) as col:  # stale: taken over
        assert json.loads((path / "write.lock").read_text())["pid"] == os.getpid()
        assert col.get(["a"])[0]["text"] == "heart"


def test_add_in_batches_is_one_commit_and_a_failing_batch_writes_nothing(tmp_path):
    rng = random.Random(12)
    docs = [make_doc(rng, f"d{i}") for i in range(7)]
    with Collection.create(tmp_path / "c", "bm25", merge_policy=None) as col:
        col.add(docs[:1])
        assert col.add((d for d in docs[1:]), batch_size=3) == 6  # a generator, 3 at a time
        assert col.generation == 2 and len(col.snapshot.segments) == 3  # segments of 1, 3, 3 documents
        check_equals_fresh(col, {d["_id"]: d for d in docs}, tmp_path, BM25Options())
        state = (col.generation, sorted(os.listdir(tmp_path / "c" / "segments")))
        new = [make_doc(rng, f"n{i}") for i in range(5)]

        def failing():
            yield from new[:4]
            raise OSError("read error")

        for bad, error in [(new[:4] + [new[0]], "more than once in this batch: 'n0'"),
                           (new[:4] + [docs[2]], "already in the collection: 'd2'"),
                           (new[:3] + [{"_id": "n9", "text": 3}], "document 'n9': 'text' must be a string"),
                           (failing(), "read error")]:
            with pytest.raises((ValueError, OSError), match=error):
                col.add(bad, batch_size=2)
            assert (col.generation, sorted(os.listdir(tmp_path / "c" / "segments"))) == state
        assert col.upsert(new, batch_size=2) == 5 and col.generation == state[0] + 1
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            col.add(new, batch_size=0)


def test_a_writer_dropped_without_close_releases_its_lock(tmp_path):
    """A writer garbage collected unclosed releases write.lock (as a crash would: what it committed
    stays); a forked child dropping its copy of its parent's writer leaves the parent's lock alone."""
    import gc

    path, rng = tmp_path / "c", random.Random(8)
    docs = [make_doc(rng, f"d{i}") for i in range(6)]
    col = Collection.create(path, "bm25")
    col.add(docs[:4])
    col.add(docs[4:])
    col.delete(["d1"])
    del col
    gc.collect()
    model = {d["_id"]: d for d in docs if d["_id"] != "d1"}
    with Collection.open(path) as col:  # the same process opens it for writing again
        assert col.ids() == list(model) and col.get(list(model)) == list(model.values())
        check_equals_fresh(col, model, tmp_path, BM25Options())
        col.add([make_doc(rng, "e0")])
    writer = Collection.open(path)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            del writer
            gc.collect()
            try:
                Collection.open(path)
            except CollectionLockedError:
                code = 0  # still the parent's
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(CollectionLockedError, match=rf"pid {os.getpid()}"):
        Collection.open(path)
    writer.add([make_doc(rng, "e1")])
    writer.close()
    with Collection.open(path, readonly=True) as reader:
        assert reader.ids() == list(model) + ["e0", "e1"]


def test_readers_in_threads_see_only_committed_states(tmp_path):
    rng = random.Random(9)
    path = tmp_path / "c"
    options = BM25Options()
    col = Collection.create(path, options, merge_policy=TieredMergePolicy(segments_per_tier=2, floor_docs=3))
    col.add([make_doc(rng, f"d{i}") for i in range(6)])
    states = [col.ids()]
    models = [{d: col.get([d])[0] for d in col.ids()}]
    seen: list[tuple[int, list]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(own: bool) -> None:
        c = Collection.open(path, readonly=True) if own else col
        try:
            while not stop.is_set():
                if own:
                    c.refresh()
                filtered = rng.random() < 0.5
                res = c.search(QUERIES, k=5, filter=FILTER if filtered else None)
                seen.append((int(filtered), [hits(res, i) for i in range(len(QUERIES))]))
                time.sleep(0.02)  # let the writer run (2 cores)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    col.search(QUERIES, k=5, filter=FILTER)  # first use imports the query path
    threads = [threading.Thread(target=reader, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    while len(seen) < 8 and not errors:
        time.sleep(0.01)
    next_id = 6
    for step in range(10):
        if step % 3 == 2:
            col.delete(rng.sample(col.ids(), 2))
        elif step % 5 == 4:
            col.optimize()
        else:
            col.upsert([make_doc(rng, f"d{next_id + j}") for j in range(3)] + [make_doc(rng, rng.choice(col.ids()))])
            next_id += 3
        states.append(col.ids())
        models.append({d: col.get([d])[0] for d in col.ids()})
    stop.set()
    for t in threads:
        t.join()
    col.close()
    assert not errors, errors
    assert len(seen) > 40
    # every result a reader saw equals a fresh build of some committed state
    refs = []
    for model in models:
        ref = fresh(tmp_path, options, list(model.values()))
        refs.append([[hits(r, i) for i in range(len(QUERIES))]
                     for r in (ref.search(QUERIES, k=5), ref.search(QUERIES, k=5, filter=FILTER))])
        ref.close()
    for filtered, got in seen:
        assert any(all(same_hits(g, w) for g, w in zip(got, per_state[filtered])) for per_state in refs)


# ---------------------------------------------------------------------- paths and damage
@pytest.fixture
def built(tmp_path) -> Path:
    path = tmp_path / "c"
    with Collection.create(path, "bm25", merge_policy=None) as col:
        col.add([{"_id": f"a{i}", "text": f"heart disease {i}", "metadata": {"n": i}} for i in range(5)])
        col.add([{"_id": f"b{i}", "text": f"stock market {i}"} for i in range(4)])
        col.delete(["a1", "b2"])
    return path


def _segment_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "segments").rglob("*") if p.is_file())


def test_every_damaged_file_is_refused_naming_it(built):
    with Collection.open(built, readonly=True) as col:
        want = col.search(QUERIES, k=4).ids.tolist()
    targets = _segment_files(built) + sorted((built / "deletes").iterdir()) + sorted(built.glob("commit_*.json"))[-1:]
    for f in targets:
        original = f.read_bytes()
        for pos in {0, len(original) // 2, len(original) - 1}:
            damaged = bytearray(original)
            damaged[pos] ^= 0x20
            f.write_bytes(bytes(damaged))
            try:
                with Collection.open(built, readonly=True) as col:  # only a byte nothing reads may pass
                    assert col.search(QUERIES, k=4).ids.tolist() == want, f
            except IndexFormatError as exc:
                assert f.name in str(exc) or f.parent.name in str(exc), (f, exc)
            f.write_bytes(original)
    extra = built / "segments" / sorted(os.listdir(built / "segments"))[0] / "extra.npy"
    extra.write_bytes(b"x")
    with pytest.raises(IndexFormatError, match="extra.npy"):
        Collection.open(built, readonly=True)


def _rewrite_commit(path: Path, edit) -> None:
    f = sorted(path.glob("commit_*.json"))[-1]
    body = json.loads(f.read_text())
    body.pop("checksum")
    edit(body)
    body["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    f.write_text(json.dumps(body))


@pytest.mark.parametrize("field,value", [("name", "../../etc"), ("name", "/tmp/seg_00000001"),
                                         ("deletes", "../deletes/seg_00000000.00000003.npy"),
                                         ("deletes", "/etc/passwd")])
def test_commit_paths_stay_inside_the_collection(built, field, value):
    _rewrite_commit(built, lambda b: b["segments"][0].__setitem__(field, value))
    with pytest.raises(IndexFormatError, match=field):
        Collection.open(built, readonly=True)


def test_symlinks_out_of_the_collection_are_refused(built, tmp_path):
    seg = built / "segments" / sorted(os.listdir(built / "segments"))[0]
    outside = tmp_path / "outside"
    shutil.copytree(seg, outside)
    shutil.rmtree(seg)
    seg.symlink_to(outside)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        Collection.open(built, readonly=True)
    seg.unlink()
    shutil.copytree(outside, seg)
    (seg / "docs.parquet").unlink()
    (seg / "docs.parquet").symlink_to(outside / "docs.parquet")
    with pytest.raises(IndexFormatError, match="symbolic link"):
        Collection.open(built, readonly=True)


def test_merge_policy_bounds_segments_and_keeps_order(tmp_path):
    policy = TieredMergePolicy(segments_per_tier=3, floor_docs=2)
    with Collection.create(tmp_path / "c", "bm25", merge_policy=policy) as col:
        for i in range(30):
            col.add([{"_id": f"d{i}", "text": f"word{i % 4} common"}])
            assert len(col.snapshot.segments) <= 3 * 4
        assert col.ids() == [f"d{i}" for i in range(30)]
        assert len(col.snapshot.segments) < 10
        names = {s.name for s in col.snapshot.segments}
        on_disk = set(os.listdir(tmp_path / "c" / "segments"))
        assert names <= on_disk and len(list((tmp_path / "c").glob("commit_*.json"))) == 2
    with Collection.create(tmp_path / "off", "bm25", merge_policy=None) as col:
        for i in range(5):
            col.add([{"_id": f"d{i}", "text": "x"}])
        assert len(col.snapshot.segments) == 5
        col.optimize()
        assert len(col.snapshot.segments) == 1 and col.ids() == [f"d{i}" for i in range(5)]
