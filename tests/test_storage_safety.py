"""Storage safety of the saved index formats (issue 12, item 5): a save killed at any point leaves
the old or the new index at the path; manifests name only files inside their directory and
must checksum every file; hostile manifests get one-line errors; damaged files are refused or
search exactly as the undamaged index."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lsr import IndexFormatError, InvertedIndex
from lsr.io.swap import CRASH_ENV, CRASH_EXIT, CRASH_POINTS

REPO = Path(__file__).resolve().parent.parent


def corpus(n_docs: int, seed: int) -> sp.csr_matrix:
    m = sp.random(n_docs, 60, density=0.1, format="csr", dtype=np.float32, random_state=seed)
    m.data += np.float32(0.01)
    return m


QUERIES = corpus(12, 99)


def state(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """What the index at ``path`` holds and returns: ids and top-10 of the fixed queries."""
    index = InvertedIndex.load(path)
    res = index.search(QUERIES, k=10)
    return list(index.doc_ids), res.ids, res.scores


def same(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def build(n_docs: int, seed: int) -> InvertedIndex:
    return InvertedIndex.from_csr(corpus(n_docs, seed), doc_ids=[f"s{seed}-{i}" for i in range(n_docs)])


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


# A save as InvertedIndex.save does it, of a prepared index's files: the subprocess imports only
# the swap module, so that each kill costs a few tens of milliseconds.
SAVE_SCRIPT = """
import shutil, sys
from pathlib import Path
import lsr.io.swap as swap
{prelude}
with swap.atomic_directory({path!r}, "lsr.inverted") as tmp:
    for f in Path({source!r}).iterdir():
        shutil.copy(f, tmp / f.name)
"""
NO_EXCHANGE = "swap._exchange = lambda a, b: False"


def save_in_subprocess(path: Path, source: Path, crash_at: str = "", prelude: str = "") -> int:
    env = {**os.environ, CRASH_ENV: crash_at}
    code = SAVE_SCRIPT.format(path=str(path), source=str(source), prelude=prelude)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode in (0, CRASH_EXIT), proc.stderr.decode()[-2000:]
    return proc.returncode


def make_legacy(path: Path) -> None:
    """Turn the saved index at ``path`` into a real directory, as lsr wrote before versioned saves."""
    real = path.resolve()
    path.unlink()
    shutil.copytree(real, path)
    shutil.rmtree(real)


# ---------------------------------------------------------------------------- atomic swap
@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """The three indexes the kill tests save, and what each searches to (fresh builds)."""
    root = tmp_path_factory.mktemp("states")
    out = {}
    for n, seed in ((40, 1), (55, 2), (30, 3)):
        build(n, seed).save(root / f"s{seed}")
        out[seed] = state(root / f"s{seed}")
        out[f"src{seed}"] = (root / f"s{seed}").resolve()
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "legacy-directory"])
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "moved-aside"])
def test_killed_save_leaves_old_or_new_index(tmp_path, states, point, legacy):
    path = tmp_path / "idx"
    build(40, 1).save(path)
    if legacy:
        make_legacy(path)
    assert save_in_subprocess(path, states["src2"], crash_at=point) == CRASH_EXIT
    got = state(path)
    expected = 1 if point in ("written", "synced", "linked") else 2  # the link is renamed in between
    assert same(got, states[expected]), f"killed at {point}: not the {'old' if expected == 1 else 'new'} index"
    build(30, 3).save(path)  # the next save replaces it and removes every leftover
    assert same(state(path), states[3])
    assert siblings(path) == [path.resolve().name] and path.is_symlink()


def test_sigkill_at_random_times_leaves_a_complete_index(tmp_path, states):
    """Real SIGKILLs of a process saving two indexes in turn (InvertedIndex.load + save), at
    several timings."""
    path = tmp_path / "idx"
    build(40, 1).save(path)
    code = textwrap.dedent(f"""
        from lsr import InvertedIndex
        a, b = InvertedIndex.load({str(states["src1"])!r}), InvertedIndex.load({str(states["src2"])!r})
        while True:
            a.save({str(path)!r})
            print(flush=True)
            b.save({str(path)!r})
    """)
    for delay in (0.0, 0.01):
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                                env={**os.environ, CRASH_ENV: ""})
        proc.stdout.readline()  # a save is done, the next one starting
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        got = state(path)
        assert same(got, states[1]) or same(got, states[2]), f"killed after {delay} s: neither index"
    build(30, 3).save(path)
    assert siblings(path) == [path.resolve().name]


def test_without_exchange_a_legacy_directory_is_renamed_aside(tmp_path, states):
    """Where ``renameat2`` is missing, the first save over a legacy directory renames it aside
    just before the link goes in (the one non-atomic step, docs/FORMAT.md): killed there, the old
    index is whole in ``.NAME.old-*``; the next save removes it."""
    path = tmp_path / "idx"
    build(40, 1).save(path)
    make_legacy(path)
    assert save_in_subprocess(path, states["src2"], crash_at="moved-aside", prelude=NO_EXCHANGE) == CRASH_EXIT
    aside = [p for p in tmp_path.iterdir() if ".old-" in p.name]
    assert not os.path.lexists(path) and len(aside) == 1 and same(state(aside[0]), states[1])
    assert save_in_subprocess(path, states["src2"], prelude=NO_EXCHANGE) == 0
    assert same(state(path), states[2]) and siblings(path) == [path.resolve().name]
    make_legacy(path)
    assert save_in_subprocess(path, states["src3"], prelude=NO_EXCHANGE) == 0
    assert same(state(path), states[3]) and siblings(path) == [path.resolve().name]


def test_save_follows_to_the_current_version_and_failed_save_keeps_it(tmp_path, states, monkeypatch):
    path = tmp_path / "idx"
    build(40, 1).save(path)
    first = path.resolve()
    import lsr.index.inverted as inv

    monkeypatch.setattr(inv, "save_ids", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        build(55, 2).save(path)
    assert path.resolve() == first and siblings(path) == [first.name]
    assert same(state(path), states[1])


def test_remove_index_removes_the_link_and_every_version(tmp_path):
    from lsr.io.manifest import remove_index

    path = tmp_path / "idx"
    build(40, 1).save(path)
    (tmp_path / f".idx.v-{'0' * 12}").mkdir()  # a leftover of a killed save
    (tmp_path / "idx2").mkdir()  # a neighbour whose name starts alike stays
    remove_index(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx2"]
    build(40, 1).save(path)
    make_legacy(path)
    remove_index(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx2"]


# ---------------------------------------------------------------------------- manifests: paths and coverage
@pytest.fixture
def saved(tmp_path, states):
    """A fresh copy (a plain directory) of a saved index."""
    shutil.copytree(states["src1"], tmp_path / "idx")
    return tmp_path / "idx"


def _edit(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _entry(f: Path) -> dict:
    return {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/hostname", "a/../../x.npy", "./offsets.npy", "",
                                  "C:/x.npy", "a\\..\\x.npy", "manifest.json"])
def test_manifest_names_only_files_inside(saved, name):
    outside = saved.parent / "outside.npy"
    outside.write_bytes(b"x")
    _edit(saved, lambda m: m["files"].update({name: _entry(outside)}))
    with pytest.raises(IndexFormatError, match="field 'files' names") as err:
        InvertedIndex.load(saved)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("where", ["file", "directory"])
def test_links_inside_an_index_are_refused(saved, where):
    copy = saved.parent / "elsewhere"
    copy.mkdir()
    if where == "file":  # same bytes, so only the link itself is wrong
        shutil.copy(saved / "words.npy", copy / "words.npy")
        (saved / "words.npy").unlink()
        (saved / "words.npy").symlink_to(copy / "words.npy")
    else:
        (saved / "sub").symlink_to(copy, target_is_directory=True)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        InvertedIndex.load(saved, verify=False)


@pytest.mark.parametrize("edit", ["empty", "missing", "one left out", "left out and removed"])
def test_a_manifest_must_checksum_every_file(saved, edit):
    if edit == "empty":
        _edit(saved, lambda m: m.update(files={}))
    elif edit == "missing":
        _edit(saved, lambda m: m.pop("files"))
    elif edit == "one left out":
        _edit(saved, lambda m: m["files"].pop("words.npy"))
    else:  # the required set: a float index has weights.npy, whatever the table says
        _edit(saved, lambda m: m["files"].pop("weights.npy"))
        (saved / "weights.npy").unlink()
    match = {"empty": "does not list", "missing": "'files'", "one left out": "words.npy",
             "left out and removed": "does not checksum weights.npy"}[edit]
    for verify in (True, False):
        with pytest.raises(IndexFormatError, match=match):
            InvertedIndex.load(saved, verify=verify)


def test_an_added_file_is_refused(saved):
    (saved / "notes.txt").write_text("hello")
    with pytest.raises(IndexFormatError, match="notes.txt: a file the manifest does not list"):
        InvertedIndex.load(saved)


# ---------------------------------------------------------------------------- hostile manifests
HOSTILE = {  # name: (edit, text the one-line error must contain besides the manifest's path)
    "list": (lambda m: [m], "not an object"),
    "string": (lambda m: "lsr.inverted", "not an object"),
    "number": (lambda m: 3, "not an object"),
    "null": (lambda m: None, "not an object"),
    "n_docs string": (lambda m: {**m, "n_docs": "40"}, "'n_docs'"),
    "n_docs float": (lambda m: {**m, "n_docs": 40.0}, "'n_docs'"),
    "n_docs bool": (lambda m: {**m, "n_docs": True}, "'n_docs'"),
    "n_docs negative": (lambda m: {**m, "n_docs": -1}, "'n_docs'"),
    "n_docs huge": (lambda m: {**m, "n_docs": 10**30}, "'n_docs'"),
    "vocab huge": (lambda m: {**m, "vocab_size": 2**62}, "'vocab_size'"),
    "n_words missing": (lambda m: {k: v for k, v in m.items() if k != "n_words"}, "'n_words'"),
    "forward string": (lambda m: {**m, "forward": "no"}, "'forward'"),
    "metadata list": (lambda m: {**m, "metadata": [1]}, "'metadata'"),
    "quantization list": (lambda m: {**m, "quantization": [8]}, "'quantization.bits'"),
    "quantization scale inf": (lambda m: {**m, "quantization": {"bits": 8, "scale": float("inf"),
                                                               "fine_bits": 16, "fine_scale": 1.0}},
                               "'quantization.scale'"),
    "format list": (lambda m: {**m, "format": ["lsr.inverted"]}, "field 'format'"),
    "version string": (lambda m: {**m, "format_version": "3"}, "format version"),
    "files list": (lambda m: {**m, "files": ["words.npy"]}, "'files'"),
    "files entry string": (lambda m: {**m, "files": {**m["files"], "words.npy": "abc"}}, "'files.words.npy'"),
    "files bytes string": (lambda m: {**m, "files": {**m["files"], "words.npy": {"bytes": "9", "sha256": "0" * 64}}},
                           "'files.words.npy.bytes'"),
    "files bytes huge": (lambda m: {**m, "files": {**m["files"], "words.npy": {"bytes": 10**40, "sha256": "0" * 64}}},
                         "'files.words.npy.bytes'"),
    "files sha number": (lambda m: {**m, "files": {**m["files"], "words.npy": {"bytes": 9, "sha256": 7}}},
                         "'files.words.npy.sha256'"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_manifest_gets_a_one_line_error(saved, name):
    edit, expected = HOSTILE[name]
    m = json.loads((saved / "manifest.json").read_text())
    text = json.dumps(edit(m))
    (saved / "manifest.json").write_text(text)
    with pytest.raises(IndexFormatError) as err:
        InvertedIndex.load(saved, verify=False)
    message = str(err.value)
    assert "\n" not in message and "manifest.json" in message and expected in message, message


@pytest.mark.parametrize("text", ["[" * 100_000, '{"format": ' + "9" * 5000 + "}", "\xff\xfe", '{"a": NaN'])
def test_unparsable_manifest_gets_a_one_line_error(saved, text):
    (saved / "manifest.json").write_text(text, encoding="latin-1")
    with pytest.raises(IndexFormatError, match="manifest.json: corrupt manifest") as err:
        InvertedIndex.load(saved)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- retrievers and hybrids
@pytest.fixture(scope="module")
def texts():
    words = "heart lung brain soil market stock crops sleep cancer blood".split()
    rng = np.random.default_rng(3)
    ids = [f"d{i}" for i in range(40)]
    return ids, [" ".join(rng.choice(words, 8)) for _ in ids], ["heart lung", "soil crops", "stock sleep"]


@pytest.fixture
def hybrid_dir(tmp_path, texts):
    from lsr.retrievers.hybrid import HybridRetriever
    from lsr.retrievers.sparse import BM25Retriever

    ids, docs, queries = texts
    h = HybridRetriever([BM25Retriever(), BM25Retriever(k1=0.5, b=0.3)], depth=20)
    h.index(ids, docs)
    h.save(tmp_path / "hyb")
    return (tmp_path / "hyb").resolve(), h.search(queries, k=5)


def _hybrid_results(path: Path, queries):
    from lsr.retrievers.base import load_retriever

    return load_retriever(path).search(queries, k=5)


def test_hybrid_components_are_plain_directories_covered_by_its_manifest(hybrid_dir, texts):
    path, want = hybrid_dir
    m = json.loads((path / "manifest.json").read_text())
    comps = m["config"]["component_dirs"]
    for d in comps:
        assert (path / d).is_dir() and not (path / d).is_symlink()
        assert f"{d}/manifest.json" in m["files"] and f"{d}/index/words.npy" in m["files"]
    got = _hybrid_results(path, texts[2])
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.scores, want.scores)


@pytest.mark.parametrize("target", ["../other", "/tmp", "components/../../other", "", 7, None, "link"])
def test_hybrid_component_dirs_stay_inside(hybrid_dir, tmp_path, target):
    path, _ = hybrid_dir
    other = tmp_path / "other"
    shutil.copytree(path / "components" / "0-bm25", other)  # a valid retriever, outside
    if target == "link":
        (path / "components" / "link").symlink_to(other, target_is_directory=True)
        target = "components/link"
    _edit(path, lambda m: m["config"].update(component_dirs=[target, m["config"]["component_dirs"][1]]))
    from lsr.retrievers.base import load_retriever

    with pytest.raises(IndexFormatError, match="component_dirs|symbolic link") as err:
        load_retriever(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("victim", ["components/0-bm25/index/words.npy", "components/1-bm25/manifest.json",
                                    "components/0-bm25/encoder/encoder.json"])
def test_damage_inside_a_hybrid_component_is_refused(hybrid_dir, victim):
    """The components load without hashing again, but the hybrid's manifest hashed them."""
    path, _ = hybrid_dir
    f = path / victim
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    from lsr.retrievers.base import load_retriever

    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        load_retriever(path)


def test_hybrid_manifest_without_component_files_is_refused(hybrid_dir):
    path, _ = hybrid_dir
    _edit(path, lambda m: m.update(files={k: v for k, v in m["files"].items() if not k.startswith("components/0")}))
    from lsr.retrievers.base import load_retriever

    with pytest.raises(IndexFormatError, match="does not list"):
        load_retriever(path)


@pytest.mark.parametrize("edit", [lambda m: ["bm25"], lambda m: {**m, "retriever": ["bm25"]},
                                  lambda m: {**m, "config": [1]}])
def test_hostile_retriever_manifest(hybrid_dir, edit):
    path, _ = hybrid_dir
    (path / "manifest.json").write_text(json.dumps(edit(json.loads((path / "manifest.json").read_text()))))
    from lsr.retrievers.base import load_retriever

    with pytest.raises(IndexFormatError) as err:
        load_retriever(path, verify=False)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


# ---------------------------------------------------------------------------- bit flips
def flip_bits(f: Path, seed: int, n: int = 3, skip: int = 0) -> None:
    """Flip ``n`` random bits of file ``f`` (after its first ``skip`` bytes)."""
    rng = np.random.default_rng(seed)
    data = bytearray(f.read_bytes())
    for _ in range(n):
        data[int(rng.integers(skip, len(data)))] ^= 1 << int(rng.integers(0, 8))
    f.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def saved_bm25(tmp_path_factory, texts):
    from lsr.retrievers.sparse import BM25Retriever

    ids, docs, queries = texts
    r = BM25Retriever()
    r.index(ids, docs)
    path = tmp_path_factory.mktemp("bm25") / "bm25"
    r.save(path)
    return path.resolve(), r.search(queries, k=5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("victim", ["index/words.npy", "index/weights.npy", "index/offsets.npy",
                                    "index/manifest.json", "encoder/vocab.parquet", "encoder/encoder.json"])
def test_bit_flips_in_a_saved_retriever(tmp_path, saved_bm25, texts, victim, seed):
    from lsr.retrievers.base import load_retriever

    source, want = saved_bm25
    shutil.copytree(source, tmp_path / "bm25")
    queries = texts[2]
    flip_bits(tmp_path / "bm25" / victim, seed)
    try:
        got = load_retriever(tmp_path / "bm25").search(queries, k=5)
    except IndexFormatError:
        return
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.scores, want.scores)


@pytest.fixture(scope="module")
def dense_parts(tmp_path_factory):
    pytest.importorskip("faiss")
    from lsr.index.dense import DenseIndex
    from lsr.index.maxsim import MultiVectors
    from lsr.index.muvera import FDEConfig, FDEIndex

    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 16)).astype(np.float32)
    root = tmp_path_factory.mktemp("dense")
    dense = DenseIndex.build(x, doc_ids=[f"v{i}" for i in range(80)])
    dense.save(root / "dense")
    sets = [rng.normal(size=(int(rng.integers(1, 5)), 8)).astype(np.float32) for _ in range(30)]
    docs = MultiVectors.from_list(sets, dtype=np.float16)
    fde = FDEIndex.build(docs, FDEConfig(dim=8, k_sim=2, d_proj=4, reps=2), doc_ids=[f"m{i}" for i in range(30)])
    fde.save(root / "fde")
    q = MultiVectors.from_list([rng.normal(size=(3, 8)).astype(np.float32) for _ in range(5)])
    return root, dense, x[:6] + 0.1, fde, q


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("victim", ["dense/faiss.index", "dense/doc_ids.parquet", "fde/fde/faiss.index",
                                    "fde/multivectors.npy", "fde/multivectors_offsets.npy", "fde/fde/manifest.json"])
def test_bit_flips_in_dense_and_fde_directories(dense_parts, tmp_path, victim, seed):
    from lsr.index.dense import DenseIndex
    from lsr.index.muvera import FDEIndex

    root, dense, xq, fde, q = dense_parts
    kind = victim.split("/")[0]
    shutil.copytree(root / kind, tmp_path / kind)
    flip_bits(tmp_path / victim, seed, skip=0)
    cls, index, queries = (DenseIndex, dense, xq) if kind == "dense" else (FDEIndex, fde, q)
    want = index.search(queries, k=5)
    try:
        got = cls.load(tmp_path / kind).search(queries, k=5)
    except IndexFormatError as exc:
        assert "\n" not in str(exc)
        return
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.scores, want.scores)
    assert list(got.external_ids().ravel()) == list(want.external_ids().ravel())
