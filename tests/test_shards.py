"""Resumable sharded encoding: interruption (hook and SIGKILL), resume, identical vectors, lsr index."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest_splade import CORPUS, QUERIES, tiny_beir, tiny_mlm  # noqa: E402

from lsr.io.shards import encode_corpus_to_shards, load_shards, read_progress  # noqa: E402
from lsr.encoders.splade import SpladeEncoder  # noqa: E402
from lsr.errors import IndexFormatError  # noqa: E402

__all__ = ["tiny_beir", "tiny_mlm"]

REPO = Path(__file__).resolve().parents[1]
IDS = [f"doc{i}" for i in range(23)]
TEXTS = [f"{t} {x} " * (1 + i % 3) for i, (t, x) in enumerate(list(CORPUS.values()) * 4)][:23]


class Interrupt(Exception):
    pass


class Counting:
    """Wraps an encoder and counts the documents it encodes."""

    def __init__(self, enc):
        self.enc, self.n = enc, 0
        self.vocab, self.vocab_size = enc.vocab, enc.vocab_size

    def config(self):
        return self.enc.config()

    def encode_documents(self, texts, **kw):
        self.n += len(texts)
        return self.enc.encode_documents(texts, **kw)


def _same(a, b):
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def test_shards_equal_direct_encoding(tiny_mlm, tmp_path):
    enc = SpladeEncoder(tiny_mlm, doc_max_length=24)
    encode_corpus_to_shards(enc, IDS, TEXTS, tmp_path / "s", shard_size=5)
    ids, vectors = load_shards(tmp_path / "s")
    assert ids == IDS and vectors.vocab == enc.vocab
    assert len(list((tmp_path / "s").glob("shard-*.data.npy"))) == 5
    direct = SpladeEncoder(tiny_mlm, doc_max_length=24).encode_documents(TEXTS)
    np.testing.assert_allclose(vectors.to_scipy().toarray(), direct.to_scipy().toarray(), atol=1e-6)


def test_interrupted_run_resumes_with_identical_vectors(tiny_mlm, tmp_path):
    full = tmp_path / "full"
    encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, full, shard_size=4)

    def stop_after_two(i):
        if i == 1:
            raise Interrupt

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, part, shard_size=4, on_shard=stop_after_two)
    progress = read_progress(part)
    assert [s["shard"] for s in progress["shards"]] == [0, 1] and not progress["complete"]
    with pytest.raises(IndexFormatError, match="unfinished"):
        load_shards(part)
    counting = Counting(SpladeEncoder(tiny_mlm))
    encode_corpus_to_shards(counting, IDS, TEXTS, part, shard_size=4)
    assert counting.n == len(IDS) - 8  # only the unfinished shards were encoded
    ids_a, a = load_shards(full)
    ids_b, b = load_shards(part)
    assert ids_a == ids_b
    _same(a, b)


def test_killed_lsr_encode_resumes(tiny_mlm, tiny_beir, tmp_path):
    """SIGKILL a real encoding process after its second shard, then resume it with `lsr encode`."""
    from click.testing import CliRunner

    from lsr.cli import main

    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import os, signal
        from lsr.io.readers import read_corpus
        from lsr.encoders.splade import SpladeEncoder
        from lsr.io.shards import encode_corpus_to_shards
        c = read_corpus({str(tiny_beir / 'corpus.jsonl')!r})
        def die(i):
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        encode_corpus_to_shards(SpladeEncoder({str(tiny_mlm)!r}), c.ids, c.all_contents(), {str(out)!r},
                                shard_size=2, on_shard=die)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert len(read_progress(out)["shards"]) == 2
    runner = CliRunner()
    args = ["encode", str(tiny_beir), "-m", str(tiny_mlm), "--shard-size", "2"]
    res = runner.invoke(main, [*args, str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, [*args, str(tmp_path / "clean")])
    assert res.exit_code == 0, res.output
    ids_a, a = load_shards(out)
    ids_b, b = load_shards(tmp_path / "clean")
    assert ids_a == ids_b == list(CORPUS)
    _same(a, b)


def test_mismatch_restart_and_corruption(tiny_mlm, tmp_path):
    out = tmp_path / "s"
    encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, out, shard_size=10)
    with pytest.raises(ValueError, match="fingerprint"):
        encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS[::-1], out, shard_size=10)
    with pytest.raises(ValueError, match="encoder"):
        encode_corpus_to_shards(SpladeEncoder(tiny_mlm, top_k=3), IDS, TEXTS, out, shard_size=10)
    encode_corpus_to_shards(SpladeEncoder(tiny_mlm, top_k=3), IDS, TEXTS, out, shard_size=10, restart=True)
    _, v = load_shards(out)
    assert np.diff(v.indptr).max() <= 3
    data = out / "shard-00001.data.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="checksum"):
        load_shards(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, tmp_path / "other")


def test_lsr_index_from_shards_and_eval_doc_vectors(tiny_mlm, tiny_beir, tmp_path):
    from click.testing import CliRunner

    from lsr.cli import main
    from lsr.retrievers.base import load_retriever
    from lsr.retrievers.sparse import SpladeRetriever

    runner = CliRunner()
    res = runner.invoke(main, ["encode", str(tiny_beir), str(tmp_path / "enc"), "-m", str(tiny_mlm)])
    assert res.exit_code == 0, res.output
    # no --model: the shards record the encoder
    res = runner.invoke(main, ["index", str(tmp_path / "enc"), str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    # built shard by shard (build_index) in a work directory that is removed afterwards
    current = (tmp_path / "idx").resolve().name  # the saved version the link names
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != current) == ["enc", "idx"]
    got = load_retriever(tmp_path / "idx")
    direct = SpladeRetriever.from_options(model=str(tiny_mlm))
    direct.index(list(CORPUS), [f"{t} {x}" if t else x for t, x in CORPUS.values()])
    q = list(QUERIES.values())
    a, b = got.search(q, k=4), direct.search(q, k=4)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    # lsr eval reuses the shards instead of encoding, and gives the run of a fresh encoding
    for name, extra in (("splade", []), ("inference-free", ["--idf", str(tiny_mlm / "idf.json")])):
        runs = []
        for vec in (["--doc-vectors", str(tmp_path / "enc")], []):
            o = tmp_path / f"eval-{name}-{len(vec)}"
            res = runner.invoke(main, ["eval", str(tiny_beir), "-r", name, "-m", str(tiny_mlm), "-o", str(o),
                                       *extra, *vec])
            assert res.exit_code == 0, res.output
            runs.append((o / "run.trec").read_text())
        assert runs[0] == runs[1]
    res = runner.invoke(main, ["eval", str(tiny_beir), "-r", "splade", "-m", str(tiny_mlm), "-o", str(tmp_path / "x"),
                               "--doc-max-length", "9", "--doc-vectors", str(tmp_path / "enc")])
    assert res.exit_code != 0 and "doc_max_length" in res.output


def test_progress_manifest_is_json_and_complete(tiny_mlm, tmp_path):
    encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS[:3], TEXTS[:3], tmp_path, shard_size=2)
    p = json.loads((tmp_path / "progress.json").read_text())
    assert p["complete"] and p["n_shards"] == 2 and p["n_docs"] == 3
    assert [(s["start"], s["stop"]) for s in p["shards"]] == [(0, 2), (2, 3)]


@pytest.mark.parametrize("restart", [False, True])
def test_run_killed_before_its_first_progress_file_starts_again(tiny_mlm, tmp_path, monkeypatch, restart):
    """Killed after writing doc_ids.parquet (here: while writing the vocabulary, which is left
    truncated) and before progress.json: a rerun, resuming or --restart, encodes everything."""
    import lsr.io.shards as shards

    real_save_ids = shards.save_ids

    def killed_on_vocab(directory, name, ids):
        real_save_ids(directory, name, ids)
        if name == "vocab.parquet":
            file = directory / name
            file.write_bytes(file.read_bytes()[:100])
            raise Interrupt

    out = tmp_path / "s"
    monkeypatch.setattr(shards, "save_ids", killed_on_vocab)
    with pytest.raises(Interrupt):
        encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, out, shard_size=5)
    monkeypatch.setattr(shards, "save_ids", real_save_ids)
    (out / ".progress.json.tmp").write_text('{"format": "lsr.enc')  # and its first progress file half-written
    assert sorted(p.name for p in out.iterdir()) == [".progress.json.tmp", "doc_ids.parquet", "vocab.parquet"]
    with pytest.raises(IndexFormatError, match="not an encoded-shards directory"):
        load_shards(out)
    counting = Counting(SpladeEncoder(tiny_mlm))
    encode_corpus_to_shards(counting, IDS, TEXTS, out, shard_size=5, restart=restart)
    assert counting.n == len(IDS)
    encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, tmp_path / "clean", shard_size=5)
    ids_a, a = load_shards(out)
    ids_b, b = load_shards(tmp_path / "clean")
    assert ids_a == ids_b == IDS and a.vocab == b.vocab
    _same(a, b)
    assert not list(out.glob(".*.tmp"))
    # a directory with anything else in it is still refused, progress file or not
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "doc_ids.parquet").write_bytes((out / "doc_ids.parquet").read_bytes())
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        encode_corpus_to_shards(SpladeEncoder(tiny_mlm), IDS, TEXTS, tmp_path / "mixed", restart=restart)
    assert (tmp_path / "mixed" / "notes.txt").read_text() == "mine"


def test_killed_before_progress_lsr_encode_reruns(tiny_mlm, tiny_beir, tmp_path):
    """The same through `lsr encode`: today's message told the user to delete the directory."""
    from click.testing import CliRunner

    from lsr.cli import main
    from lsr.io.manifest import save_ids

    out = tmp_path / "enc"
    out.mkdir()
    save_ids(out, "doc_ids.parquet", list(CORPUS))
    res = CliRunner().invoke(main, ["encode", str(tiny_beir), str(out), "-m", str(tiny_mlm), "--shard-size", "2"])
    assert res.exit_code == 0, res.output
    ids, vectors = load_shards(out)
    assert ids == list(CORPUS) and len(vectors) == len(CORPUS)
