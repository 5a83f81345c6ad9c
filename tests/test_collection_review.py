"""Adversarial review of live collections (issue 12): each test failed before its fix.

Durability of tombstones, refresh racing commits, a collection replaced under a reader, bad
documents through the API and ``lsr add``, hostile segment manifests. References are fresh
builds over the surviving documents or the file system calls themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from lsr.collection import Collection
from lsr.errors import DataFormatError, IndexFormatError


@pytest.fixture
def no_fsync(monkeypatch):
    monkeypatch.setenv("LSR_COLLECTION_FSYNC", "0")


def _docs(prefix: str, n: int, words: str = "heart disease") -> list[dict]:
    return [{"_id": f"{prefix}{i}", "text": f"{words} {prefix}{i}", "metadata": {"n": i}} for i in range(n)]


def _same(a, b) -> bool:
    if [d for d, _ in a] != [d for d, _ in b]:
        return False
    return np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-7)


def _fresh(path: Path, docs: list[dict]) -> Collection:
    col = Collection.create(path, "bm25", merge_policy=None)
    col.add(docs)
    return col


# ---------------------------------------------------------------------- durability
def test_every_renamed_file_has_its_directory_fsynced_before_the_commit(tmp_path, monkeypatch):
    """A tombstone file renamed into deletes/ must have deletes/ fsynced before the commit that
    names it is renamed in: otherwise a power loss can keep the commit and lose the tombstone."""
    monkeypatch.setenv("LSR_COLLECTION_FSYNC", "1")
    col = Collection.create(tmp_path / "c", "bm25", merge_policy=None)
    col.add(_docs("a", 4))
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("rename", os.path.realpath(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    col.delete(["a1"])
    monkeypatch.undo()
    col.close()
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    commit_at = next(i for i in renames if os.path.basename(events[i][1]).startswith("commit_"))
    for i in renames:
        parent = os.path.dirname(events[i][1])
        synced = [j for j, e in enumerate(events) if e == ("fsync", parent) and j > i]
        assert synced, f"{events[i][1]}: its directory is never fsynced after the rename"
        if i < commit_at:
            assert synced[0] < commit_at, f"{events[i][1]}: directory fsynced only after the commit"


# ---------------------------------------------------------------------- refresh racing commits
def test_concurrent_refreshes_never_move_a_reader_back(tmp_path, no_fsync):
    """Two threads refreshing one readonly collection: the one that loaded an older commit must
    not overwrite the newer snapshot the other installed."""
    path = tmp_path / "c"
    writer = Collection.create(path, "bm25", merge_policy=None)
    writer.add(_docs("a", 3))
    reader = Collection.open(path, readonly=True)
    writer.add(_docs("b", 2))
    gate, entered = threading.Event(), threading.Event()
    build = reader._build_snapshot

    def slow_build(commit, verify):
        snap = build(commit, verify)
        if commit.generation == 2 and not entered.is_set():
            entered.set()
            gate.wait(20)
        return snap

    reader._build_snapshot = slow_build
    first = threading.Thread(target=reader.refresh)
    first.start()
    assert entered.wait(20)
    writer.add(_docs("c", 2))
    second = threading.Thread(target=reader.refresh)
    second.start()
    second.join(2.0)  # before the fix it finishes at generation 3; after it waits for the first
    gate.set()
    first.join(20)
    second.join(20)
    assert reader.generation == writer.generation == 3
    assert reader.ids() == writer.ids()
    reader.close()
    writer.close()


def test_refresh_of_the_writer_racing_its_own_commit_loses_nothing(tmp_path, no_fsync, monkeypatch):
    """A writer's refresh() in another thread that reads the commit being written, then installs
    it after the writer's next commit, set the writer back one generation: its next commit then
    replaced the newer commit file (documents lost)."""
    import lsr.collection.collection as module

    path = tmp_path / "c"
    col = Collection.create(path, "bm25", merge_policy=None)
    col.add(_docs("a", 3))
    gate, entered = threading.Event(), threading.Event()
    build = col._build_snapshot
    racer: list[threading.Thread] = []

    def gated_build(commit, verify):
        if racer and threading.current_thread() is racer[0]:
            entered.set()
            gate.wait(20)
        return build(commit, verify)

    col._build_snapshot = gated_build
    real_point = module.crash_point

    def point(name):
        real_point(name)
        if name == "committed" and not racer:
            racer.append(threading.Thread(target=col.refresh))
            racer[0].start()
            while not entered.is_set() and racer[0].is_alive():
                racer[0].join(0.01)

    monkeypatch.setattr(module, "crash_point", point)
    col.add(_docs("b", 2))     # generation 2, the racer loads it
    col.add(_docs("c", 2))     # generation 3
    gate.set()
    racer[0].join(20)
    col.add(_docs("d", 2))     # must be generation 4, not a second generation 3
    want = [d["_id"] for p in "abcd" for d in _docs(p, 3 if p == "a" else 2)]
    assert col.ids() == want
    col.close()
    with Collection.open(path, readonly=True) as again:
        assert again.ids() == want


# ---------------------------------------------------------------------- a collection replaced under a reader
def test_reader_of_a_replaced_collection_reopens_segments_of_the_same_name(tmp_path, no_fsync):
    """A readonly reader reused its open segments by name alone: after the collection at its path
    was replaced (``lsr index --overwrite``, or removed and created again) a refresh searched the
    old collection's seg_00000000 as part of the new one (wrong documents, wrong scores, stale
    filter masks). The commit's manifest SHA-256 now decides."""
    path = tmp_path / "c"
    old = _fresh(path, _docs("a", 6))
    reader = Collection.open(path, readonly=True)
    reader.search("heart", k=3, filter={"n": 1})  # caches seg_00000000's filter mask
    old.close()
    shutil.rmtree(path)
    new = _fresh(path, _docs("b", 4, "heart attack"))
    new.add(_docs("c", 3, "heart"))
    assert reader.refresh()
    docs = [d for p, n, w in (("b", 4, "heart attack"), ("c", 3, "heart")) for d in _docs(p, n, w)]
    ref = _fresh(tmp_path / "ref", docs)
    assert reader.ids() == ref.ids() == new.ids()
    for flt in (None, {"n": 1}):
        got, want = reader.search("heart", k=5, filter=flt), ref.search("heart", k=5, filter=flt)
        assert _same(got.hits(0), want.hits(0)), (flt, got.hits(0), want.hits(0))
    assert reader.get(["b1", "a1"]) == ref.get(["b1", "a1"])
    for col in (reader, new, ref):
        col.close()


# ---------------------------------------------------------------------- bad documents
@pytest.mark.parametrize("doc,field,message", [
    ({"_id": "a b", "text": "x"}, "_id", "whitespace"),
    ({"_id": "a\nb", "text": "x"}, "_id", "whitespace"),
    ({"_id": "a\ud800", "text": "x"}, "_id", "surrogate"),
    ({"_id": "s", "text": "bad \ud800 text"}, "text", "surrogate"),
    ({"_id": "s", "title": "\udfff", "text": "x"}, "title", "surrogate"),
    ({"_id": "s", "text": "x", "metadata": {"k\ud800": 1}}, "metadata", "surrogate"),
    ({"_id": "s", "text": "x", "metadata": {"k": ["\ud800"]}}, "metadata", "surrogate"),
    ({"_id": "s", "title": 0, "text": "x"}, "title", "string"),
    ({"_id": "s", "title": ["t"], "text": "x"}, "title", "string"),
])
def test_bad_documents_are_refused_naming_the_field_and_nothing_is_written(tmp_path, no_fsync, doc, field, message):
    """Ids a TREC run cannot hold (the corpus readers refuse them too), text that UTF-8 cannot
    encode (was a UnicodeEncodeError from pyarrow) and non-string titles (were silently
    emptied) are refused as DataFormatError naming the field; the collection is unchanged."""
    col = _fresh(tmp_path / "c", _docs("a", 2))
    before = (col.generation, sorted(os.listdir(tmp_path / "c" / "segments")))
    with pytest.raises(DataFormatError, match=message) as info:
        col.add([{"_id": "ok", "text": "fine"}, doc])
    assert info.value.field == field and "\n" not in str(info.value)
    assert (col.generation, sorted(os.listdir(tmp_path / "c" / "segments"))) == before
    assert col.ids() == ["a0", "a1"]
    col.close()


def test_deeply_nested_metadata_is_a_data_format_error(tmp_path, no_fsync):
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    col = _fresh(tmp_path / "c", _docs("a", 1))
    with pytest.raises(DataFormatError, match="nested"):
        col.add([{"_id": "d", "text": "x", "metadata": deep}])
    assert col.ids() == ["a0"]
    col.close()


# ---------------------------------------------------------------------- lsr add
GOOD = json.dumps({"_id": "g1", "text": "fine words"})


@pytest.mark.parametrize("name,content,field", [
    ("dup.jsonl", f"{GOOD}\n{GOOD}\n", "_id"),                                          # no file:line before
    ("nan.jsonl", GOOD + '\n{"_id": "n1", "text": "x", "metadata": {"v": NaN}}\n', "metadata"),
    ("typo.jsonl", GOOD + '\n{"_id": "u1", "txt": "a typo"}\n', "txt"),                  # was an empty document
    ("utf8.jsonl", GOOD.encode() + b'\n{"_id": "u2", "text": "\xff"}\n', None),
    ("surrogate.jsonl", GOOD + '\n{"_id": "s1", "text": "\\ud800"}\n', "text"),
    ("space.jsonl", GOOD + '\n{"_id": "a b", "text": "x"}\n', "_id"),
    ("deep.jsonl", GOOD + '\n{"_id": "d", "text": "x", "metadata": ' + '{"a":' * 3000 + "1" + "}" * 3001 + "\n", None),
])
def test_lsr_add_names_the_file_and_line_and_writes_nothing(tmp_path, no_fsync, name, content, field):
    from click.testing import CliRunner

    from lsr.cli import main

    path = tmp_path / "c"
    _fresh(path, _docs("a", 2)).close()
    docs = tmp_path / name
    if isinstance(content, bytes):
        docs.write_bytes(content)
    else:
        docs.write_text(content)
    res = CliRunner().invoke(main, ["add", str(path), str(docs)])
    assert res.exit_code == 1, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"{docs}:2:" in error[0], res.output
    if field is not None:
        assert f"field {field!r}" in error[0], error
    with Collection.open(path, readonly=True) as col:
        assert col.generation == 1 and col.ids() == ["a0", "a1"]


# ---------------------------------------------------------------------- hostile segment manifests
@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b'"text"'])
def test_hostile_segment_manifest_with_a_matching_commit_is_refused(tmp_path, no_fsync, raw):
    """A segment manifest that is not a JSON object (its SHA-256 written into a re-checksummed
    commit) raised AttributeError / JSONDecodeError instead of IndexFormatError naming it."""
    path = tmp_path / "c"
    _fresh(path, _docs("a", 3)).close()
    commit = sorted(path.glob("commit_*.json"))[-1]
    body = json.loads(commit.read_text())
    body.pop("checksum")
    seg = path / "segments" / body["segments"][0]["name"] / "manifest.json"
    seg.write_bytes(raw)
    body["segments"][0]["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    body["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    commit.write_text(json.dumps(body))
    with pytest.raises(IndexFormatError, match="manifest.json"):
        Collection.open(path, readonly=True)


def test_delete_and_get_refuse_ids_that_are_not_strings(tmp_path, no_fsync):
    """delete/get turned every id into str(): delete([None]) deleted the document 'None',
    delete([b'a0']) silently matched nothing (b'a0' -> "b'a0'")."""
    col = _fresh(tmp_path / "c", [{"_id": "None", "text": "x"}, {"_id": "a0", "text": "y"}])
    for bad in ([None], [b"a0"], ["a0", 3]):
        with pytest.raises(TypeError, match="id"):
            col.delete(bad)
        with pytest.raises(TypeError, match="id"):
            col.get(bad)
    assert col.ids() == ["None", "a0"] and col.generation == 1
    assert col.delete(iter(["a0", "a0", "zz"])) == 1 and col.get(["a0", "None"])[0] is None
    col.close()


# ---------------------------------------------------------------------- a collection replaced under a writer
def test_lsr_index_overwrite_refuses_a_collection_open_for_writing(tmp_path, no_fsync):
    """``lsr index --overwrite`` swapped the collection away under a live writer, whose next
    commit then went into the new collection (naming its own segments by number: the new
    collection no longer opened)."""
    from click.testing import CliRunner

    from lsr.cli import main

    path, corpus = tmp_path / "c", tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"n{i}", "text": f"new doc {i}"}) + "\n" for i in range(4)))
    writer = _fresh(path, _docs("o", 3))
    res = CliRunner().invoke(main, ["index", str(corpus), str(path), "--overwrite"])
    assert res.exit_code == 1 and "open for writing" in res.output, res.output
    writer.add(_docs("p", 1))
    writer.close()
    with Collection.open(path, readonly=True) as col:
        assert col.ids() == ["o0", "o1", "o2", "p0"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-swapped leftovers
    res = CliRunner().invoke(main, ["index", str(corpus), str(path), "--overwrite"])
    assert res.exit_code == 0, res.output
    with Collection.open(path, readonly=True) as col:
        assert col.ids() == [f"n{i}" for i in range(4)]


def test_a_writer_whose_directory_was_replaced_stops_writing(tmp_path, no_fsync):
    """A writer whose collection was removed and created again at its path kept committing into
    the new one (its commit named its own segments, the new collection's cleaning then removed
    the new segments): it now refuses with CollectionLockedError and leaves the new one intact."""
    from lsr.errors import CollectionLockedError

    path = tmp_path / "c"
    old = _fresh(path, _docs("o", 3))
    shutil.rmtree(path)
    new = _fresh(path, _docs("n", 2))
    new.close()
    for op in (lambda: old.add(_docs("p", 1)), lambda: old.delete(["o1"]), old.optimize):
        with pytest.raises(CollectionLockedError, match="replaced"):
            op()
    with Collection.open(path) as col:
        assert col.ids() == ["n0", "n1"] and col.generation == 1
        assert sorted(os.listdir(path / "segments")) == ["seg_00000000"]


def test_lsr_index_overwrite_never_leaves_the_path_without_a_collection(tmp_path, no_fsync, monkeypatch):
    """The overwrite swap was two renames (old aside, new in): killed between them, the path held
    no collection. Every rename during the command must leave a complete collection at the path."""
    from click.testing import CliRunner

    from lsr.cli import main
    from lsr.cli.collection import is_collection

    path, corpus = tmp_path / "c", tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"n{i}", "text": f"new doc {i}"}) + "\n" for i in range(4)))
    _fresh(path, _docs("o", 3)).close()
    real_rename, gaps = os.rename, []

    def rename(a, b):
        real_rename(a, b)
        if not is_collection(path):
            gaps.append((str(a), str(b)))

    monkeypatch.setattr(os, "rename", rename)
    res = CliRunner().invoke(main, ["index", str(corpus), str(path), "--overwrite"])
    monkeypatch.undo()
    assert res.exit_code == 0, res.output
    assert not gaps, gaps
    with Collection.open(path, readonly=True) as col:
        assert col.ids() == [f"n{i}" for i in range(4)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_k_beyond_the_live_documents_is_capped_not_allocated(tmp_path):
    import lsr

    with lsr.Collection.create(tmp_path / "c", "bm25") as col:
        col.add([{"_id": "a", "text": "heart disease"}, {"_id": "b", "text": "stock markets"}])
        res = col.search(["heart"], k=10**12)  # would be a 10**12-column allocation
        assert res.ids.shape == (1, 2)
        assert res.hits(0)[0][0] == "a"
        col.delete(["a", "b"])
        assert col.search(["heart"], k=5).ids.shape == (1, 0)
