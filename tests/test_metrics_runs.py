"""Metrics against pytrec_eval used directly, hand-computed values, and TREC run IO."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import pytrec_eval

from lsr import DataFormatError, evaluate, read_run, write_run
from lsr.metrics import evaluate_per_query


def random_case(seed):
    rng = np.random.default_rng(seed)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(200, 8, replace=False)} for i in range(30)}
    run = {f"q{i}": {f"d{j}": float(rng.random()) for j in rng.choice(200, 150, replace=False)} for i in range(28)}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytrec_eval(seed):
    qrels, run = random_case(seed)
    means, table = evaluate(qrels, run, ["ndcg@10", "recall@100", "map", "precision@5"], remove_self=False,
                            per_query=True)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map", "P.5"}).evaluate(run)
    for q in qrels:
        r = ref.get(q)
        for ours, theirs in [("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("map", "map"),
                             ("precision@5", "P_5")]:
            expected = r[theirs] if r else 0.0  # queries missing from the run count as 0 (trec_eval -c)
            assert table[q][ours] == pytest.approx(expected, abs=1e-12)
    assert means["ndcg@10"] == pytest.approx(sum(t["ndcg@10"] for t in table.values()) / len(qrels))


def test_hand_computed_values():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": {"x": 3.0, "a": 2.0, "y": 1.5, "b": 1.0}}
    m = evaluate(qrels, run, ["ndcg@10", "mrr@10", "mrr@1", "recall@2", "map"])
    # trec_eval's ndcg uses the relevance level itself as the gain
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["mrr@10"] == pytest.approx(1 / 2)
    assert m["mrr@1"] == 0.0
    assert m["recall@2"] == pytest.approx(1 / 2)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_self_hits_removed_by_default():
    qrels = {"q1": {"q1": 1, "d": 1}}
    run = {"q1": {"q1": 5.0, "d": 4.0}}
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == 1.0  # 'd' moves to rank 1
    assert evaluate(qrels, run, ["recall@100"])["recall@100"] == 0.5
    assert evaluate(qrels, run, ["recall@100"], remove_self=False)["recall@100"] == 1.0


def test_mrr_cutoff_uses_trec_eval_order():
    # ties on score are ordered by docid descending, as trec_eval does
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0}}
    assert evaluate(qrels, run, ["mrr@1"])["mrr@1"] == 0.0
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == ref == 0.5


def test_bad_metric_names():
    for bad in ["ndcg@0", "recall", "foo@10", "ndcg@x"]:
        with pytest.raises(ValueError):
            evaluate({"q": {"a": 1}}, {}, [bad])


def test_run_roundtrip_and_errors(tmp_path):
    run = {"q1": {"d1": 1.25, "d2": 3.5, "d3": 3.5}, "q2": {"x": -1.0}}
    p = tmp_path / "r.trec"
    write_run(run, p, tag="t")
    lines = p.read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 3.5 t" and lines[1] == "q1 Q0 d2 2 3.5 t"
    assert read_run(p) == run
    # float32 scores survive the file exactly, so ties and order are those in memory
    import numpy as np
    f32 = {"q": {f"d{i}": float(np.float32(x)) for i, x in enumerate(np.random.default_rng(0).random(200) * 50)}}
    write_run(f32, p)
    back = read_run(p)["q"]
    assert all(np.float32(back[d]) == np.float32(v) for d, v in f32["q"].items())
    buf = io.StringIO()
    write_run(run, buf)
    assert buf.getvalue().count("\n") == 4
    with pytest.raises(ValueError, match="one word"):
        write_run(run, buf, tag="two words")
    with pytest.raises(ValueError, match="not finite"):
        write_run({"q": {"d": float("nan")}}, buf)
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 one t\n")
    with pytest.raises(DataFormatError, match=r"bad.trec:2: field 'score'"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 1.0\n")
    with pytest.raises(DataFormatError, match=r"bad.trec:1: expected 6 columns"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d1 2 0.5 t\n")
    with pytest.raises(DataFormatError, match="listed twice"):
        read_run(bad)


@pytest.mark.parametrize("bad", ["d 1", "d\t1", "d\n1", "d\u00a01", "d\u3000", "\ud800", ""], ids=ascii)
def test_run_writer_refuses_ids_a_trec_run_cannot_hold(tmp_path, bad):
    """An id with whitespace would split into extra columns; a lone surrogate cannot be UTF-8."""
    p = tmp_path / "r.trec"
    with pytest.raises(ValueError, match=r"document id .* not writable in a TREC run"):
        write_run({"q1": {"d0": 2.0, bad: 1.0}}, p)
    with pytest.raises(ValueError, match=r"query id .* not writable in a TREC run"):
        write_run({bad: {"d0": 1.0}}, p)
    assert not p.exists() and not list(tmp_path.iterdir())  # nothing half-written is left
