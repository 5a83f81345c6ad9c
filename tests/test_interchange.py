"""JsonVectorCollection (Anserini/pyserini) and Seismic JSONL: write, read, index with lsr."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lsr.io.interchange import (
    export_collection,
    looks_like_vector_jsonl,
    read_collection,
    read_vector_jsonl,
    write_vector_jsonl,
)
from lsr.errors import DataFormatError
from lsr.types import SparseBatch

VOCAB = ["[PAD]", "heart", "disease", "##s", "blood", "pressure"]


def _batch() -> SparseBatch:
    return SparseBatch.from_rows([([1, 2, 3], [2.3456, 0.004, 1.0]), ([], []), ([4, 5], [0.125, 3.5])], vocab=VOCAB)


def test_jsonvector_lines_are_anserini_shaped():
    f = io.StringIO()
    write_vector_jsonl(f, ["a", "b", "c"], _batch(), fmt="jsonvector", scale=100)
    lines = [json.loads(x) for x in f.getvalue().splitlines()]
    assert lines[0] == {"id": "a", "contents": "", "vector": {"heart": 235, "##s": 100}}  # 0.4 rounds to 0: dropped
    assert lines[1] == {"id": "b", "contents": "", "vector": {}}
    assert lines[2]["vector"] == {"blood": 12, "pressure": 350}  # round half to even, as numpy rounds
    assert all(isinstance(v, int) for x in lines for v in x["vector"].values())


def test_round_trips(tmp_path):
    b = _batch()
    export_collection(tmp_path / "jv", ["a", "b", "c"], b, fmt="jsonvector", scale=1000)
    sidecar = json.loads((tmp_path / "jv" / "export.json").read_text())
    assert sidecar["scale"] == 1000 and sidecar["format"] == "jsonvector"
    ids, back = read_collection(tmp_path / "jv", vocab=VOCAB)
    assert ids == ["a", "b", "c"]
    want = np.rint(b.to_scipy().toarray().astype(np.float64) * 1000) / 1000
    np.testing.assert_allclose(back.to_scipy().toarray(), want, atol=1e-7)
    # one file of the collection also finds the sidecar's scale
    _, one = read_collection(tmp_path / "jv" / "collection" / "part-00000.jsonl", vocab=VOCAB)
    np.testing.assert_allclose(one.to_scipy().toarray(), want, atol=1e-7)
    export_collection(tmp_path / "se", ["a", "b", "c"], b, fmt="seismic")
    line = json.loads((tmp_path / "se" / "collection" / "part-00000.jsonl").read_text().splitlines()[0])
    assert set(line) == {"id", "content", "vector"}
    ids, back = read_collection(tmp_path / "se", vocab=VOCAB)
    np.testing.assert_array_equal(back.to_scipy().toarray(), b.to_scipy().toarray())  # float32 exact


def test_read_without_vocab_and_unknown_tokens(tmp_path, caplog):
    f = tmp_path / "v.jsonl"
    f.write_text('{"id": "x", "content": "", "vector": {"zeta": 1.5, "heart": 2}}\n\n'
                 '{"id": "y", "content": "", "vector": {"heart": 0.5}}\n')
    assert looks_like_vector_jsonl(f)
    ids, b = read_vector_jsonl(f)
    assert ids == ["x", "y"] and list(b.vocab) == ["zeta", "heart"]
    assert b.decode(0) == [("heart", 2.0), ("zeta", 1.5)]
    ids, b = read_vector_jsonl(f, vocab=VOCAB)
    assert b.vocab_size == len(VOCAB) and b.decode(0) == [("heart", 2.0)]
    assert "not in the vocabulary" in caplog.text


@pytest.mark.parametrize("line, field, msg", [
    ('{"id": "x", "vector": {"a": 1}', None, "invalid JSON"),
    ('{"vector": {"a": 1}}', "id", "missing document id"),
    ('{"id": "x", "vector": [1, 2]}', "vector", "token -> weight"),
    ('{"id": "x", "vector": {"a": "heavy"}}', "vector", "finite number"),
])
def test_bad_lines_name_file_line_field(tmp_path, line, field, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": "ok", "vector": {"a": 1}}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=msg) as info:
        read_vector_jsonl(f)
    assert info.value.line == 2 and info.value.field == field and info.value.path == str(f)


def test_lsr_index_reads_jsonvector_and_seismic(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from click.testing import CliRunner
    from conftest_splade import CORPUS, QUERIES, build_tiny_mlm, write_tiny_beir

    from lsr.cli import main
    from lsr.retrievers.base import load_retriever

    model = build_tiny_mlm(tmp_path / "model")
    beir = write_tiny_beir(tmp_path / "beir")
    runner = CliRunner()
    for fmt in ("jsonvector", "seismic"):
        res = runner.invoke(main, ["encode", str(beir), str(tmp_path / fmt), "-m", str(model), "--format", fmt])
        assert res.exit_code == 0, res.output
    q = list(QUERIES.values())
    res = runner.invoke(main, ["index", str(tmp_path / "jsonvector"), str(tmp_path / "i0")])
    assert res.exit_code != 0 and "--retriever" in res.output
    results = {}
    for name, src in (("shards", tmp_path / "seismic" / "shards"), ("seismic", tmp_path / "seismic"),
                      ("seismic-file", tmp_path / "seismic" / "collection" / "part-00000.jsonl"),
                      ("jsonvector", tmp_path / "jsonvector")):
        extra = [] if name == "shards" else ["-r", "splade", "-m", str(model)]
        res = runner.invoke(main, ["index", str(src), str(tmp_path / f"i-{name}"), *extra])
        assert res.exit_code == 0, res.output
        r = load_retriever(tmp_path / f"i-{name}")
        results[name] = r.search(q, k=len(CORPUS))
    for name in ("seismic", "seismic-file"):
        np.testing.assert_array_equal(results[name].ids, results["shards"].ids)
        np.testing.assert_allclose(results[name].scores, results["shards"].scores, atol=1e-6)
    # integer impacts / 100: scores move by at most sum(|q|) * 0.005
    np.testing.assert_allclose(results["jsonvector"].scores, results["shards"].scores, atol=0.05)
