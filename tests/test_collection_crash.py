"""kill -9 safety of collections: injected kills at every named point between the steps of add,
upsert, delete and merge (``LSR_COLLECTION_CRASH_AT`` makes the process ``os._exit`` there), and
real SIGKILLs of a writer process at several timings. After each kill the collection must open at
the last commit (the state before the operation, or after it once the commit file is renamed in),
hold every committed document intact, search as a fresh build of that state, and the next writer
open must leave no temporary file or unreferenced segment behind.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from lsr.collection import Collection, TieredMergePolicy
from lsr.collection.commit import CRASH_ENV, CRASH_EXIT, TEMP_MARK, commit_generations, read_commit
from lsr.retrievers.options import BM25Options
from test_collection_storage import FILTER, QUERIES, fresh, hits, make_doc, same_hits

BEFORE = ("segment-written", "segment-synced", "merge-written", "deletes-written", "commit-written")
AFTER = ("commit-renamed", "committed", "cleaning")
OPS = {  # operation -> the points it passes
    "add": ("segment-written", "segment-synced", "commit-written", "commit-renamed", "committed", "cleaning"),
    "upsert": ("segment-written", "segment-synced", "deletes-written", "commit-written", "commit-renamed",
               "committed", "cleaning"),
    "delete": ("deletes-written", "commit-written", "commit-renamed", "committed", "cleaning"),
    "optimize": ("merge-written", "segment-synced", "commit-written", "commit-renamed", "committed", "cleaning"),
}


def _run(col: Collection, op: str, rng: random.Random) -> None:
    if op == "add":
        col.add([make_doc(rng, f"new{i}") for i in range(3)])
    elif op == "upsert":
        col.upsert([make_doc(rng, "a1"), make_doc(rng, "b0"), make_doc(rng, "new9")])
    elif op == "delete":
        col.delete(["a0", "b3"])
    else:
        col.optimize()


def _state(path: Path) -> tuple[list[str], dict, list]:
    with Collection.open(path, readonly=True) as col:
        ids = col.ids()
        docs = dict(zip(ids, col.get(ids)))
        res = [col.search(QUERIES, k=5, filter=f) for f in (None, FILTER)]
        return ids, docs, [[hits(r, i) for i in range(len(QUERIES))] for r in res]


def _check_clean(path: Path) -> None:
    """After a writer open: only what the last two commits name, no temporary names."""
    gens = commit_generations(path)
    assert len(gens) <= 2
    named = set().union(*(read_commit(path, g).files() for g in gens))
    for sub in ("segments", "deletes"):
        for entry in os.listdir(path / sub):
            assert f"{sub}/{entry}" in named, entry
    for root, dirs, files in os.walk(path):
        assert not [n for n in dirs + files if TEMP_MARK in n], root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "base"
    rng = random.Random(3)
    with Collection.create(path, "bm25", merge_policy=None) as col:
        col.add([make_doc(rng, f"a{i}") for i in range(5)])
        col.add([make_doc(rng, f"b{i}") for i in range(4)])
        col.delete(["a2"])
    return path


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


@pytest.mark.parametrize("op,point", [(op, p) for op, points in OPS.items() for p in points])
def test_injected_kill_between_steps(base, tmp_path, op, point):
    path, done = tmp_path / "c", tmp_path / "done"
    shutil.copytree(base, path)
    shutil.copytree(base, done)
    with Collection.open(done, merge_policy=None) as col:  # the same operation, not interrupted
        _run(col, op, random.Random(1))
    before, after = _state(path), _state(done)

    def child() -> None:
        os.environ[CRASH_ENV] = point
        with Collection.open(path, merge_policy=None) as col:
            _run(col, op, random.Random(1))

    _, status = os.waitpid(_fork(child), 0)
    assert os.waitstatus_to_exitcode(status) == CRASH_EXIT, f"{point} not reached by {op}"
    got = _state(path)  # a reader first: opens at the last commit, nothing cleaned yet
    want = before if point in BEFORE else after
    assert got[0] == want[0] and got[1] == want[1]
    for g, w in zip(got[2], want[2]):
        assert all(same_hits(a, b) for a, b in zip(g, w))
    with Collection.open(path, merge_policy=None) as col:  # the next writer cleans up
        _check_clean(path)
        assert col.ids() == want[0]
        col.add([{"_id": "later", "text": "heart disease"}])  # and carries on
    assert _state(path)[0] == want[0] + ["later"]


def _plan(seed: int, n: int) -> list[tuple[str, list]]:
    rng = random.Random(seed)
    live: list[str] = []
    plan = []
    for j in range(n):
        op = rng.choice(["add", "add", "upsert", "delete", "optimize"]) if live else "add"
        if op == "add":
            arg = [make_doc(rng, f"k{j}-{i}") for i in range(rng.randint(1, 4))]
        elif op == "upsert":
            arg = [make_doc(rng, d) for d in rng.sample(live, min(2, len(live)))]
        elif op == "delete":
            arg = rng.sample(live, min(2, len(live)))
        else:
            arg = []
        plan.append((op, arg))
        if op in ("add", "upsert"):
            live = [d for d in live if d not in {x["_id"] for x in arg}] + [x["_id"] for x in arg]
        elif op == "delete":
            live = [d for d in live if d not in arg]
    return plan


def _models(plan) -> list[dict]:
    model: dict = {}
    out = [dict(model)]
    for op, arg in plan:
        if op in ("add", "upsert"):
            for d in arg:
                model.pop(d["_id"], None)
                model[d["_id"]] = d
        elif op == "delete":
            for d in arg:
                model.pop(d, None)
        out.append(dict(model))
    return out


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5, 1.0])
def test_real_sigkill_of_a_writer_at_several_timings(tmp_path, delay):
    path, log = tmp_path / "c", tmp_path / "log"
    Collection.create(path, "bm25").close()
    plan = _plan(int(delay * 100), 400)
    models = _models(plan)

    def child() -> None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with Collection.open(path, merge_policy=TieredMergePolicy(segments_per_tier=3, floor_docs=3)) as col:
            for op, arg in plan:
                getattr(col, op)(*([arg] if op != "optimize" else []))
                os.write(fd, b"1")

    pid = _fork(child)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the writer finished before the kill: raise the plan's length"
    done = len(log.read_bytes()) if log.exists() else 0
    with Collection.open(path) as col:
        _check_clean(path)
        ids = col.ids()
        candidates = [m for m in models[done:done + 2] if list(m) == ids]
        assert candidates, (done, ids)
        model = candidates[0]
        assert col.get(ids) == [model[i] for i in ids]  # every committed document intact
        if model:
            ref = fresh(tmp_path, BM25Options(), list(model.values()))
            for flt in (None, FILTER):
                got, want = col.search(QUERIES, k=5, filter=flt), ref.search(QUERIES, k=5, filter=flt)
                assert all(same_hits(hits(got, i), hits(want, i)) for i in range(len(QUERIES)))
            ref.close()



def _staged(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if TEMP_MARK in p.name or ".new-" in p.name or ".old-" in p.name}


def test_staging_directories_of_killed_creates_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    """A create or ``lsr index --overwrite`` killed before its rename leaves a staging directory
    beside the collection; the next writer open removes it, but not the staging directory of a
    creator still at work (its write.lock is held), one without a lock touched recently, or one
    of another collection."""
    from click.testing import CliRunner

    import lsr.collection.collection as collection_module
    import lsr.collection.leftovers as leftovers
    from lsr.cli import main

    path = tmp_path / "c"

    def killed_create(target: Path) -> None:
        os.environ[CRASH_ENV] = "create-staged"
        Collection.create(target, "bm25")

    for target in (path, tmp_path / "other"):
        _, status = os.waitpid(_fork(lambda: killed_create(target)), 0)
        assert os.waitstatus_to_exitcode(status) == CRASH_EXIT
    killed = _staged(tmp_path)
    other = {n for n in killed if n.startswith(".other")}
    assert len(killed) == 2 and len(other) == 1 and not path.exists()
    ready, go = os.pipe(), os.pipe()

    def paused_create() -> None:  # a concurrent creator of the same path, stopped before its rename
        def pause(name: str) -> None:
            if name == "create-staged":
                os.write(ready[1], b"1")
                os.read(go[0], 1)
        collection_module.crash_point = pause
        Collection.create(path, "bm25")

    creator = _fork(paused_create)
    try:
        assert os.read(ready[0], 1) == b"1"
        live = _staged(tmp_path) - killed
        assert len(live) == 1
        unlocked = tmp_path / f".c{TEMP_MARK}{'a' * 12}"  # a creator between its mkdir and its lock
        unlocked.mkdir()
        long_ago = time.time() - leftovers.STALE_SECONDS - 60
        os.utime(unlocked, (long_ago, long_ago))  # its ctime is still recent: kept
        with Collection.create(path, "bm25") as col:  # this writer's open cleans up
            col.add([make_doc(random.Random(0), "x")])
            assert _staged(tmp_path) == live | other | {unlocked.name}
    finally:
        os.write(go[1], b"1")  # the paused creator resumes: its rename fails (the path is taken), it cleans up
        os.waitpid(creator, 0)
    assert _staged(tmp_path) == other | {unlocked.name}
    # an overwrite killed while staging its new collection: the old collection stays, the next writer cleans
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "heart disease"}\n')

    def killed_overwrite() -> None:
        os.environ[CRASH_ENV] = "create-staged"
        CliRunner().invoke(main, ["index", str(corpus), str(path), "-r", "bm25", "--overwrite"])

    _, status = os.waitpid(_fork(killed_overwrite), 0)
    assert os.waitstatus_to_exitcode(status) == CRASH_EXIT
    overwrite = _staged(tmp_path) - other - {unlocked.name}
    assert len(overwrite) == 1 and next(iter(overwrite)).startswith("..c.new-")
    monkeypatch.setattr(leftovers, "STALE_SECONDS", 0.0)  # as if an hour had passed
    with Collection.open(path) as col:
        assert col.ids() == ["x"]
        assert _staged(tmp_path) == other
    _check_clean(path)
