"""lsr.train's data side: pseudo-queries, teachers, candidate sets, fusion, caching, the test-split guard, the CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest_splade import CORPUS, QUERIES, build_tiny_mlm
from lsr.io.readers import read_corpus
from lsr.io.shards import corpus_fingerprint
from lsr.train.data import CandidateSet, build_candidates, fuse, load_corpus, load_split, min_max, pseudo_split
from lsr.train.pseudo import KINDS, SPAN_WORDS, pseudo_queries
from lsr.train.teachers import BM25Teacher, SpladeTeacher, Teacher, make_teachers, parse_teachers

TRAIN = {"q1": {"d1": 2, "d5": 1, "d2": 0}, "q2": {"d2": 1}, "q3": {"d3": 1}}
TEST = {"q4": {"d4": 1}}
TEST_TEXT = "sleep and memory"


def _beir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as f:
        for i, (title, text) in CORPUS.items():
            f.write(json.dumps({"_id": i, "title": title, "text": text}) + "\n")
    with open(directory / "queries.jsonl", "w") as f:
        for q, text in QUERIES.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    for split, qrels in (("train", TRAIN), ("test", TEST)):
        with open(directory / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{g}\n" for q, rels in qrels.items() for d, g in rels.items())
    return directory


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return _beir(tmp_path_factory.mktemp("train_beir"))


@pytest.fixture(scope="module")
def mlm(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_mlm(tmp_path_factory.mktemp("train_mlm"))


def _teachers(beir: Path, spec: str, cache: Path | None):
    corpus = load_corpus(beir)
    texts = corpus.all_contents()
    return corpus, make_teachers(spec, texts, corpus_fingerprint(corpus.ids, texts), cache)


# ---------------------------------------------------------------------------- pseudo-queries
def test_pseudo_queries_are_seeded_and_cut_from_their_source():
    corpus = read_corpus(Path(__file__).parent / "data" / "tiny_beir" / "corpus.jsonl")
    a = pseudo_queries(corpus.ids, corpus.titles, corpus.texts, 50, seed=3)
    assert a == pseudo_queries(corpus.ids, corpus.titles, corpus.texts, 50, seed=3)
    assert len(a) == len({q.source for q in a})  # one query per drawn document
    other = pseudo_queries(corpus.ids, corpus.titles, corpus.texts, 50, seed=4)
    assert [q.text for q in other] != [q.text for q in a]
    for q in a:
        assert q.kind in KINDS
        words = q.text.split()
        if q.kind == "title":
            assert q.text == " ".join(corpus.titles[q.source].split())
        else:
            source = " ".join(corpus.texts[q.source].split())
            assert " ".join(words) in source
        if q.kind == "span":
            assert SPAN_WORDS[0] <= len(words) <= SPAN_WORDS[1] or len(words) == len(corpus.texts[q.source].split())
    only = pseudo_queries(corpus.ids, corpus.titles, corpus.texts, 5, seed=0, kinds=("span",))
    assert {q.kind for q in only} == {"span"}
    with pytest.raises(ValueError, match="kinds"):
        pseudo_queries(corpus.ids, corpus.titles, corpus.texts, 5, kinds=("question",))


# ---------------------------------------------------------------------------- fusion and specs
def test_min_max_and_weighted_fusion_by_hand():
    raw = np.array([[2.0, 4.0, 6.0], [10.0, 0.0, 5.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(min_max(raw[0]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(min_max(raw[2]), [0.0, 0.0, 0.0])  # all tie: no preference
    np.testing.assert_allclose(fuse(raw, [1, 1, 1]), [(0 + 1 + 0) / 3, (0.5 + 0 + 0) / 3, (1 + 0.5 + 0) / 3],
                               rtol=1e-6)
    np.testing.assert_allclose(fuse(raw, [3, 1, 0]), [(0 * 3 + 1) / 4, (0.5 * 3 + 0) / 4, (1 * 3 + 0.5) / 4],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="2 teacher weights for 3"):
        fuse(raw, [1, 1])


def test_parse_teachers():
    assert parse_teachers("bm25, dense=m@2") == [("bm25", None, 1.0), ("dense", "m", 2.0)]
    assert parse_teachers("bm25,labels@2") == [("bm25", None, 1.0), ("labels", None, 2.0)]
    for bad, why in [("bm42", "unknown teacher"), ("splade", "needs a model"), ("bm25,bm25", "twice"),
                     ("bm25@x", "not a number"), ("bm25@0", "sum to 0"), ("bm25,", "empty teacher"),
                     ("bm25,labels=q.tsv", "takes no model"), ("labels", "retriever teacher beside it")]:
        with pytest.raises(ValueError, match=why):
            parse_teachers(bad)


# ---------------------------------------------------------------------------- teachers
def _retriever_rows(retriever, corpus, queries: list[str]) -> np.ndarray:
    """Every document's score per query, from a retriever's search of the whole corpus."""
    res = retriever.search(queries, k=len(corpus))
    rows = np.full((len(queries), len(corpus)), np.nan, np.float32)
    for q in range(len(queries)):
        ok = res.ids[q] >= 0
        rows[q, res.ids[q][ok]] = res.scores[q][ok]
    return rows


def test_bm25_teacher_scores_every_document_as_the_bm25_retriever(beir):
    from lsr.retrievers.sparse import BM25Retriever

    corpus, ([teacher], _) = _teachers(beir, "bm25", None)
    queries = list(QUERIES.values()) + ["heart blood pressure smoking", "   "]
    rows = teacher.scores(queries)
    r = BM25Retriever()
    r.index(corpus.ids, corpus.all_contents())
    ref = _retriever_rows(r, corpus, queries[:-1])
    ref = np.where(np.isnan(ref), 0.0, ref)  # documents the index does not return share no term
    np.testing.assert_allclose(rows[:-1], ref, rtol=1e-5, atol=1e-6)
    assert (rows[-1] == 0).all()  # a blank query scores nothing


def test_splade_teacher_scores_every_document_as_the_splade_retriever(beir, mlm):
    from lsr.retrievers.sparse import SpladeRetriever

    corpus, ([teacher], _) = _teachers(beir, f"splade={mlm}", None)
    queries = list(QUERIES.values())
    r = SpladeRetriever(str(mlm))
    r.index(corpus.ids, corpus.all_contents())
    ref = _retriever_rows(r, corpus, queries)
    rows = teacher.scores(queries)
    seen = ~np.isnan(ref)
    np.testing.assert_allclose(rows[seen], ref[seen], rtol=1e-4, atol=1e-5)
    assert (rows[~seen] == 0).all()


# ---------------------------------------------------------------------------- candidates
class _Fixed(Teacher):
    """A teacher with given score rows (an independent reference for the candidate logic)."""

    name = "fixed"

    def __init__(self, rows: np.ndarray, tag: str, texts, fp, cache) -> None:
        super().__init__(tag, texts, fp, cache)
        self.rows = rows
        self.calls = 0

    def _encode_corpus(self) -> None:
        pass

    def scores(self, queries):
        self.calls += 1
        return self.rows[[self.index[q] for q in queries]]


def test_candidates_are_the_union_of_top_depth_and_positives_with_every_teacher_scoring_each(beir, tmp_path):
    corpus = load_corpus(beir)
    tq = load_split(beir, corpus)
    texts = corpus.all_contents()
    fp = corpus_fingerprint(corpus.ids, texts)
    rng = np.random.default_rng(0)
    teachers = []
    for tag in ("a", "b"):
        rows = rng.normal(size=(len(tq.texts), len(corpus))).astype(np.float32)
        t = _Fixed(rows, tag, texts, fp, tmp_path)
        t.index = {q: i for i, q in enumerate(tq.texts)}
        teachers.append(t)
    depth = 2
    cs = build_candidates(tq, corpus, teachers, depth=depth, cache=tmp_path)
    for q in range(len(tq.texts)):
        expected = set(tq.forced[q].tolist())
        for t in teachers:
            expected |= set(np.argsort(-t.rows[q], kind="stable")[:depth].tolist())
        assert cs.groups[q].tolist() == sorted(expected)
        for j, t in enumerate(teachers):
            np.testing.assert_array_equal(cs.raw[q][j], t.rows[q, cs.groups[q]])
        assert cs.positives[q].tolist() == [g in set(tq.forced[q].tolist()) for g in cs.groups[q]]
    data = cs.to_training_data([1.0, 3.0])
    data.check()
    for q, g in enumerate(data.groups):
        assert [data.doc_texts[i] for i in g] == [corpus.contents(int(c)) for c in cs.groups[q]]
        np.testing.assert_allclose(data.teacher[q], fuse(cs.raw[q], [1.0, 3.0]))
    # the qrels as a third teacher: 1 on the positives, 0 elsewhere, fused like the others
    labelled = cs.with_labels().to_training_data([1.0, 3.0, 2.0])
    for q in range(len(tq.texts)):
        by_hand = (min_max(cs.raw[q][0]) + 3 * min_max(cs.raw[q][1]) + 2 * cs.positives[q]) / 6
        np.testing.assert_allclose(labelled.teacher[q], by_hand, rtol=1e-6)
        assert labelled.teacher[q][cs.positives[q]].min() >= 2 / 6
    pseudo = CandidateSet(replace(tq, labelled=False), corpus, cs.teacher_names, cs.groups, cs.raw, cs.positives)
    with pytest.raises(ValueError, match="labelled queries"):
        pseudo.with_labels()
    # a second run reads everything from the cache: no teacher is asked for a score
    calls = [t.calls for t in teachers]
    again = build_candidates(tq, corpus, teachers, depth=depth, cache=tmp_path)
    assert [t.calls for t in teachers] == calls
    for a, b in zip(cs.raw, again.raw):
        np.testing.assert_array_equal(a, b)
    # another depth is another cache entry: recomputed
    build_candidates(tq, corpus, teachers, depth=depth + 1, cache=tmp_path)
    assert all(t.calls > c for t, c in zip(teachers, calls))


def test_second_run_loads_no_model(beir, mlm, tmp_path, monkeypatch):
    corpus, (teachers, w) = _teachers(beir, f"bm25,splade={mlm}", tmp_path)
    tq = load_split(beir, corpus)
    first = build_candidates(tq, corpus, teachers, depth=3, cache=tmp_path)
    assert list((tmp_path / "train" / "encodings").glob("*.npz"))  # the SPLADE corpus encoding is cached

    def refuse(*args, **kwargs):
        raise AssertionError("a cached run encoded something")

    monkeypatch.setattr(SpladeTeacher, "_encode_corpus", refuse)
    monkeypatch.setattr(BM25Teacher, "_encode_corpus", refuse)
    corpus, (fresh, _) = _teachers(beir, f"bm25,splade={mlm}", tmp_path)
    second = build_candidates(tq, corpus, fresh, depth=3, cache=tmp_path)
    assert [g.tolist() for g in first.groups] == [g.tolist() for g in second.groups]
    for a, b in zip(first.raw, second.raw):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- splits
def test_test_queries_and_test_qrels_are_never_read(beir, monkeypatch):
    import lsr.io.readers as readers

    real = readers._lines

    def guarded(path):
        if Path(path).name.startswith("test."):
            raise AssertionError(f"read {path}")
        return real(path)

    monkeypatch.setattr(readers, "_lines", guarded)
    corpus = load_corpus(beir)
    tq = load_split(beir, corpus)
    assert tq.ids == ["q1", "q2", "q3"] and TEST_TEXT not in tq.texts
    assert [corpus.ids[i] for i in tq.forced[0]] == ["d1", "d5"]  # grade 0 is no positive
    sample = load_split(beir, corpus, max_queries=2, seed=0)
    assert len(sample.ids) == 2 and set(sample.ids) < set(tq.ids) and sample.ids == sorted(sample.ids)
    with pytest.raises(ValueError, match="never used for training"):
        load_split(beir, corpus, "test")
    pq = pseudo_split(corpus, 4, seed=1)
    assert len(pq.texts) == 4 and not pq.labelled


# ---------------------------------------------------------------------------- the command
def test_lsr_train_end_to_end_supervised_and_pseudo(beir, mlm, tmp_path):
    from click.testing import CliRunner

    from lsr.cli import main
    from lsr.retrievers.sparse import InferenceFreeRetriever

    out = tmp_path / "model"
    args = ["train", str(beir), str(out), "--init", str(mlm), "--teachers", f"bm25,splade={mlm},labels",
            "--cache", str(tmp_path / "cache"), "--steps", "2", "--batch-size", "2", "--group-size", "3",
            "--doc-max-length", "32", "--checkpoint-every", "1", "--in-batch-negatives"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    described = json.loads((out / "training_data.json").read_text())
    assert described["queries"]["mode"] == "train" and described["n_queries"] == 3
    assert described["teachers"][-1] == "labels" and described["weights"] == [1.0, 1.0, 1.0]
    assert json.loads((out / "training.json").read_text())["settings"]["in_batch_negatives"] is True
    r = InferenceFreeRetriever(str(out))
    r.index(list(CORPUS), [f"{t} {x}" for t, x in CORPUS.values()])
    assert r.search(["heart disease"], k=2).ids.shape == (1, 2)
    pseudo = CliRunner().invoke(main, ["train", str(beir / "corpus.jsonl"), str(tmp_path / "adapted"), "--init",
                                       str(mlm), "--queries", "pseudo", "--pseudo-queries", "4", "--cache",
                                       str(tmp_path / "cache"), "--steps", "1", "--batch-size", "2",
                                       "--doc-max-length", "32"])
    assert pseudo.exit_code == 0, pseudo.output
    assert json.loads((tmp_path / "adapted" / "training_data.json").read_text())["queries"]["mode"] == "pseudo"
    bad = CliRunner().invoke(main, ["train", str(beir / "corpus.jsonl"), str(tmp_path / "x"), "--init", str(mlm)])
    assert bad.exit_code != 0 and "BEIR directory" in bad.output
    bad = CliRunner().invoke(main, ["train", str(beir / "corpus.jsonl"), str(tmp_path / "y"), "--init", str(mlm),
                                    "--queries", "pseudo", "--teachers", "bm25,labels"])
    assert bad.exit_code != 0 and "labels teacher needs labelled queries" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "y").exists()
