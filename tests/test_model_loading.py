"""Model names: local directories, mistyped paths and hub ids without a hub, for every encoder.

Without a reachable hub, transformers and huggingface_hub used to retry every file (24 s of
warnings for a SPLADE model, 120 s for a dense one) before failing; now one probe of the
endpoint decides in a few seconds, and a cached snapshot is used when there is one.
"""
from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lsr.encoders._torch import HUB_PROBE_TIMEOUT_S, local_model_dir, resolve_model
from lsr.encoders.embedding import DenseEncoder
from lsr.encoders.inference_free import InferenceFreeEncoder
from lsr.encoders.multivector import MultiVectorEncoder
from lsr.encoders.splade import SpladeEncoder
from lsr.errors import ModelNotFoundError

from conftest_dense import st_model
from conftest_splade import tiny_mlm

__all__ = ["st_model", "tiny_mlm"]  # fixtures used by name

ENCODERS = {
    "splade": SpladeEncoder,
    "inference-free": InferenceFreeEncoder,
    "dense": lambda m: DenseEncoder(m, device="cpu"),
    "multivector": lambda m: MultiVectorEncoder(m, device="cpu"),
}
HUB_IDS = ["naver/splade-v3", "sentence-transformers/all-MiniLM-L6-v2", "bert-base-uncased"]
torch_needed = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                  reason="needs PyTorch (the encoders' optional extra: pip install lsr[encoders])")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so a developer's real one cannot make a test load a model."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def online(monkeypatch, endpoint: str) -> None:
    """Hub mode on (the test conftest sets HF_HUB_OFFLINE=1, read at import), talking to ``endpoint``."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def fails_fast(build, model: str, caplog) -> str:
    caplog.clear()
    t = time.perf_counter()
    with caplog.at_level("WARNING"):
        with pytest.raises(ModelNotFoundError) as info:
            build(model)
    assert time.perf_counter() - t < 10
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]  # no retry chatter
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{model}: ")
    return message


@pytest.mark.parametrize("name", list(ENCODERS))
def test_mistyped_local_paths_say_no_such_model_directory(name, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    for path in (str(tmp_path / "missing" / "model"), "./splade-tiny", "../no-such-model", "~/no-such-lsr-model",
                 "splade-tiny/", "models/splade-tyni", "a/b/c", "my model", "x..y"):
        assert fails_fast(ENCODERS[name], path, caplog) == f"{path}: no such model directory"
    message = fails_fast(ENCODERS[name], "weights.bin", caplog)
    assert message == "weights.bin: a model must be a directory or a hub id, not a file"
    with pytest.raises(FileNotFoundError):  # still what callers caught before ModelNotFoundError
        ENCODERS[name]("./splade-tiny")


@torch_needed
def test_missing_or_foreign_model_paths_name_the_path(tmp_path):
    (tmp_path / "not_a_model").mkdir()
    for cls in (DenseEncoder, MultiVectorEncoder):
        for bad in (tmp_path / "missing" / "model", tmp_path / "not_a_model"):
            with pytest.raises(FileNotFoundError, match=str(bad)):
                cls(str(bad), device="cpu")


@torch_needed
def test_model_path_with_tilde(st_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "st").symlink_to(st_model)
    dense = DenseEncoder("~/st", device="cpu")
    np.testing.assert_array_equal(dense.encode_queries(["heart"]),
                                  DenseEncoder(st_model, device="cpu").encode_queries(["heart"]))
    assert len(MultiVectorEncoder("~/st", device="cpu").encode_queries(["heart"])) == 1


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("hub", ["unreachable", "offline"])
def test_hub_id_without_a_hub_fails_in_seconds(name, hub, monkeypatch, empty_hf_cache, caplog):
    if hub == "unreachable":
        online(monkeypatch, "http://127.0.0.1:9")  # discard port: connection refused
        why = "the Hugging Face hub (http://127.0.0.1:9) cannot be reached"
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        why = "HF_HUB_OFFLINE is set"
    for model in HUB_IDS:
        assert fails_fast(ENCODERS[name], model, caplog) == (
            f"{model}: not a local directory, not in the Hugging Face cache, and {why}; pass a local model directory")


def test_hub_that_accepts_but_never_answers(monkeypatch, empty_hf_cache, caplog):
    with socket.socket() as server:  # listens, never accepts: the connection hangs after the handshake
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        online(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        t = time.perf_counter()
        assert "cannot be reached" in fails_fast(SpladeEncoder, "naver/splade-v3", caplog)
        assert time.perf_counter() - t < 3 * HUB_PROBE_TIMEOUT_S


def test_reachable_hub_keeps_the_hub_id(monkeypatch, empty_hf_cache):
    """Users with internet still load by hub id: any HTTP answer of the endpoint counts."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        online(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        assert resolve_model("naver/splade-v3") == "naver/splade-v3"
        assert resolve_model("bert-base-uncased") == "bert-base-uncased"
        with pytest.raises(ModelNotFoundError, match="no such model directory"):
            resolve_model("./naver/splade-v3")
    finally:
        server.shutdown()
        server.server_close()


def test_local_model_dir_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "naver").mkdir()
    assert local_model_dir("naver") == Path("naver")
    assert local_model_dir("org/name") is None and local_model_dir("bert-base-uncased") is None
    with pytest.raises(ModelNotFoundError, match="naver/splade-v3: no such model directory"):
        local_model_dir("naver/splade-v3")  # its first component is a local directory
    assert resolve_model(tmp_path / "naver") == str((tmp_path / "naver").resolve())


def fake_hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """A Hugging Face cache holding ``files`` as the main snapshot of ``repo_id`` (symlinks, as the hub's)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in files.rglob("*"):
        target = snapshot / f.relative_to(files)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f.resolve())
    return snapshot


@pytest.mark.parametrize("hub", ["unreachable", "offline"])
def test_cached_hub_model_loads_without_the_hub(hub, tiny_mlm, tmp_path_factory, monkeypatch, empty_hf_cache):
    pytest.importorskip("torch")
    from conftest_dense import build_sentence_transformer

    if hub == "unreachable":
        online(monkeypatch, "http://127.0.0.1:9")
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_cache(empty_hf_cache, "lsr-test/tiny-mlm", tiny_mlm)
    texts = ["heart disease", "stock market fell"]
    enc, local = SpladeEncoder("lsr-test/tiny-mlm"), SpladeEncoder(tiny_mlm)
    assert enc.model_name == "lsr-test/tiny-mlm" and enc.config()["model"] == "lsr-test/tiny-mlm"
    assert enc.vocab == local.vocab
    a, b = enc.encode_documents(texts), local.encode_documents(texts)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-6)
    free = InferenceFreeEncoder("lsr-test/tiny-mlm")  # idf.json comes from the snapshot too
    np.testing.assert_array_equal(free.idf, InferenceFreeEncoder(tiny_mlm).idf)
    st = build_sentence_transformer(tmp_path_factory.mktemp("st") / "st")
    fake_hub_cache(empty_hf_cache, "lsr-test/tiny-st", st)
    dense = DenseEncoder("lsr-test/tiny-st", device="cpu")
    assert dense.config()["model"] == "lsr-test/tiny-st" and dense.normalize
    np.testing.assert_allclose(dense.encode_queries(texts), DenseEncoder(st, device="cpu").encode_queries(texts),
                               rtol=1e-5, atol=1e-6)


def test_cli_names_the_model_in_one_line(tiny_beir, tmp_path, monkeypatch, empty_hf_cache):
    from click.testing import CliRunner

    from lsr.cli import main

    online(monkeypatch, "http://127.0.0.1:9")
    t = time.perf_counter()
    res = CliRunner().invoke(main, ["encode", str(tiny_beir), str(tmp_path / "out"), "-m", "naver/splade-v3"])
    assert time.perf_counter() - t < 10
    assert res.exit_code != 0 and "naver/splade-v3: not a local directory" in res.output
    assert "pass a local model directory" in res.output and "Traceback" not in res.output
