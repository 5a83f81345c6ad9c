"""scripts/bench_collection.py --quick runs end to end and prints every row of issue 12's benchmark."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_collection.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_collection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_every_measure(bench, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert bench.main(["--quick", "--docs", "120", "--queries", "8", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "python scripts/bench_collection.py --quick" in text and "commit " in text
    for title in ("BM25 collection", "SPLADE engine segments"):
        section = text.split(title, 1)[1].split("### ", 1)[0]
        for row in ("add 12 docs to 120", "full rebuild of 132", "search 1 segment", "search 8 segments",
                    "search 32 segments", "search merged", "unfiltered exact search", "memory: RSS", "disk per document"):
            assert row in section, (title, row)
        assert len(re.findall(r"pre-filtered exact \| [\d,]+ QPS", section)) == 4
        assert "post-filter (top 10 then drop)" in section
    assert capsys.readouterr().out.count("| measure |") == 2


def test_synthetic_data_is_seeded_and_shaped(bench):
    a, qa = bench.make_texts(200, 10, seed=3)
    b, qb = bench.make_texts(200, 10, seed=3)
    assert a == b and qa == qb and a != bench.make_texts(200, 10, seed=4)[0]
    lengths = [len(t.split()) for t in a]
    assert min(lengths) >= 5 and 40 < sum(lengths) / len(lengths) < 200
    assert all(2 <= len(q.split()) <= 6 for q in qa)
    v = bench.sparse_vectors(500, 50, seed=1)
    nnz = [v.indptr[i + 1] - v.indptr[i] for i in range(500)]
    assert 40 < sum(nnz) / 500 < 60 and (v.data > 0).all() and v.indices.max() < bench.SPLADE_VOCAB
    enc = bench.StubEncoder(v, v)
    row = enc.encode_documents(["d7"])
    assert list(row.indices) == list(v.indices[v.indptr[7]:v.indptr[8]])
