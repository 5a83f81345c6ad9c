"""Collection engines against fresh retrievers over the surviving documents.

Each engine writes a tiny corpus as 3 segments, some documents deleted, and is searched with and
without an allowed mask; the reference is a fresh retriever (lsr.BM25Retriever, SpladeRetriever,
DenseRetriever, HybridRetriever) built over only the live documents, its full ranking masked by
brute force. Results must agree tie-aware (same scores rank by rank to 1e-5, every returned
document scored as the reference scores it). Merged segments must equal unmerged ones, and an
engine reloaded from disk the one built in memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import shared_model
from lsr.collection.engines import ENGINES, engine_class
from lsr.collection.engines.base import merge_hits, top_k_rows
from lsr.errors import IndexFormatError
from lsr.retrievers.options import BM25Options, DenseOptions, HybridOptions, SpladeOptions

WORDS = ("heart disease blood pressure stroke risk cancer tumour cell gene protein mutation stock market "
         "shares fell rose bank interest rate inflation climate warming carbon ocean river flood vaccine "
         "virus immune trial study patients children diet sugar exercise sleep").split()


def _corpus() -> list[str]:
    rng = np.random.default_rng(12)
    texts = []
    for i in range(40):
        n = int(rng.integers(2, 14))
        texts.append(" ".join(rng.choice(WORDS, n)) + (f" rareterm{i % 7}" if i % 5 == 0 else ""))
    texts[6] = ""                      # blank: matches nothing
    texts[21] = texts[2]               # duplicates: exact ties across segments
    texts[33] = texts[2]
    texts[30] = "zygote zygote embryo"  # terms only the last segment has
    return texts


TEXTS = _corpus()
SPLITS = [(0, 14), (14, 27), (27, 40)]
DELETED = {3, 2, 15, 20, 36}
LIVE = np.array([i not in DELETED for i in range(40)])
ALLOWED = np.array([i % 3 != 1 for i in range(40)])
QUERIES = ["heart disease risk", "stock market shares fell", "gene protein mutation cancer", "zygote embryo",
           "blood blood pressure", "rareterm0", "nothing matches qqq", "", "virus vaccine trial in children"]
K = 10
TOL = 1e-5
TWINS = {i: [j for j in range(40) if j != i and TEXTS[j] == TEXTS[i]] for i in range(40)}


def _seg_masks(mask: np.ndarray) -> list[np.ndarray]:
    return [mask[a:b].copy() for a, b in SPLITS]


def _global(seg: np.ndarray, pos: np.ndarray, offsets: list[int]) -> list[list[int]]:
    return [[int(offsets[g] + p) for g, p in zip(sr, pr) if p >= 0] for sr, pr in zip(seg, pos)]


class Built:
    """An engine with the corpus written as 3 segments under ``root``."""

    def __init__(self, name: str, options, root: Path) -> None:
        self.options = options
        self.engine = engine_class(name).create(options)
        self.root = root
        (root / "engine").mkdir()
        self.engine.save(root / "engine")
        self.parts = []
        for i, (a, b) in enumerate(SPLITS):
            d = root / f"seg_{i}"
            d.mkdir()
            self.engine.write_segment(TEXTS[a:b], d)
            self.parts.append(self.engine.open_segment(d, b - a))

    def search(self, queries=QUERIES, k=K, allowed: np.ndarray | None = None, engine=None, parts=None):
        engine = engine or self.engine
        parts = parts or self.parts
        segs = list(zip(parts, _seg_masks(LIVE)))
        seg, pos, sc = engine.search(queries, k, segs, allowed=None if allowed is None else _seg_masks(allowed))
        assert seg.shape == pos.shape == sc.shape == (len(queries), k)
        return _global(seg, pos, [a for a, _ in SPLITS]), sc


class Fresh:
    """A fresh retriever over the live documents (ids = global positions) and its full ranking."""

    def __init__(self, retriever) -> None:
        live_ids = [str(i) for i in range(40) if LIVE[i]]
        retriever.index(live_ids, [TEXTS[i] for i in range(40) if LIVE[i]])
        self.retriever = retriever
        self.full = retriever.search(QUERIES, k=int(LIVE.sum()))


def _reference(fresh: Fresh, k: int, allowed: np.ndarray | None) -> tuple[list[list[int]], list[list[float]], list[dict]]:
    """The fresh retriever's full ranking masked by brute force, cut to k."""
    res = fresh.full
    ids, scores, full = [], [], []
    for q in range(len(QUERIES)):
        hits = [(int(d), s) for d, s in res.hits(q)]
        full.append(dict(hits))
        keep = [(d, s) for d, s in hits if allowed is None or allowed[d]][:k]
        ids.append([d for d, _ in keep])
        scores.append([s for _, s in keep])
    return ids, scores, full


def assert_same(mine: tuple, ref_ids: list[list[int]], ref_scores: list[list[float]], full: list[dict]) -> None:
    ids, scores = mine
    for q, (mi, ri, rs) in enumerate(zip(ids, ref_ids, ref_scores)):
        assert len(mi) == len(ri), f"query {q}: {len(mi)} hits, reference {len(ri)}"
        assert len(set(mi)) == len(mi)
        np.testing.assert_allclose(scores[q][:len(mi)], rs, rtol=TOL, atol=TOL, err_msg=f"query {q}")
        assert np.all(scores[q][len(mi):] == 0)
        for rank, d in enumerate(mi):  # tie-aware: another document only where the scores tie
            # a document with the same text as a reference hit ties with it up to rounding, so at a
            # cut (k, a hybrid's depth) either may be taken: it is scored as its twin
            twin = next((t for t in [d] + TWINS.get(d, []) if t in full[q]), None)
            assert twin is not None, f"query {q}: document {d} is no reference hit"
            assert abs(full[q][twin] - rs[rank]) <= TOL * max(1.0, abs(rs[rank])), (q, rank, d)


# ---------------------------------------------------------------------------- fixtures (once per module)
@pytest.fixture(scope="module")
def bm25(tmp_path_factory):
    from lsr.retrievers.sparse import BM25Retriever

    built = Built("bm25", BM25Options(), tmp_path_factory.mktemp("bm25"))
    return built, Fresh(BM25Retriever())


@pytest.fixture(scope="module")
def splade(tmp_path_factory):
    from lsr.retrievers.sparse import SpladeRetriever

    options = SpladeOptions(model=str(shared_model("splade-tiny")))
    built = Built("splade", options, tmp_path_factory.mktemp("splade"))
    # the engine's encoder object (one model load): the index side is what is under test
    return built, Fresh(SpladeRetriever(built.engine.encoder))


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from lsr.retrievers.bi_encoder import DenseRetriever

    options = DenseOptions(model=str(shared_model("all-MiniLM-L6-v2")))
    built = Built("dense", options, tmp_path_factory.mktemp("dense"))
    return built, Fresh(DenseRetriever(built.engine.encoder))


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, bm25, dense):
    from lsr.retrievers.hybrid import HybridRetriever

    options = HybridOptions(components=f"bm25,dense={shared_model('all-MiniLM-L6-v2')}", depth=8)
    built = Built("hybrid", options, tmp_path_factory.mktemp("hybrid"))
    # the fresh components over the live documents, fused as HybridRetriever.from_options(options) would
    fresh = HybridRetriever([bm25[1].retriever, dense[1].retriever], norm=options.norm, fusion=options.fusion,
                            weights=options.weights, depth=options.depth)
    return built, fresh


KINDS = ["bm25", "splade", "dense"]


# ---------------------------------------------------------------------------- equal to a fresh build
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filtered", [False, True], ids=["all", "allowed"])
def test_equals_fresh_build_over_live_documents(kind, filtered, request):
    built, fresh = request.getfixturevalue(kind)
    allowed = ALLOWED if filtered else None
    assert_same(built.search(allowed=allowed), *_reference(fresh, K, allowed))


@pytest.mark.parametrize("kind", KINDS)
def test_k_results_whenever_k_documents_match(kind, request):
    """k beyond the matching documents: every match, then padding; k = 1 the single best."""
    built, fresh = request.getfixturevalue(kind)
    for k in (1, 45):
        assert_same(built.search(k=k, allowed=ALLOWED), *_reference(fresh, k, ALLOWED))


def test_bm25_single_term_scores_bit_identical(bm25):
    """One query term: the score is the weight itself, which must be BM25Encoder's bit for bit."""
    built, fresh = bm25
    queries = ["heart", "zygote", "rareterm3", "inflation"]
    ids, scores = built.search(queries=queries, k=40)
    res = fresh.retriever.search(queries, k=40)
    for q in range(len(queries)):
        ref = {int(d): s for d, s in res.hits(q)}
        assert sorted(ids[q]) == sorted(ref)
        assert all(np.float32(ref[d]) == s for d, s in zip(ids[q], scores[q]))


def test_bm25_statistics_follow_the_live_documents(bm25, tmp_path):
    """Deleting documents changes N, df and avgdl: scores change as a fresh build's do."""
    from lsr.retrievers.sparse import BM25Retriever

    built, _ = bm25
    live = LIVE.copy()
    live[[0, 1, 4, 5, 7]] = False
    segs = list(zip(built.parts, _seg_masks(live)))
    seg, pos, sc = built.engine.search(QUERIES, K, segs)
    fresh = BM25Retriever()
    fresh.index([str(i) for i in range(40) if live[i]], [TEXTS[i] for i in range(40) if live[i]])
    res = fresh.search(QUERIES, k=int(live.sum()))
    got = _global(seg, pos, [a for a, _ in SPLITS])
    for q in range(len(QUERIES)):
        ref = res.hits(q)[:K]
        np.testing.assert_allclose(sc[q][:len(got[q])], [s for _, s in ref], rtol=TOL)
        assert len(got[q]) == len(ref)


# ---------------------------------------------------------------------------- merges and reopening
@pytest.mark.parametrize("kind", KINDS)
def test_merged_segments_equal_unmerged(kind, request, tmp_path):
    built, _ = request.getfixturevalue(kind)
    live = _seg_masks(LIVE)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    built.engine.merge_segments([(built.parts[0], live[0]), (built.parts[1], live[1])], merged_dir)
    n01 = int(live[0].sum() + live[1].sum())
    merged = built.engine.open_segment(merged_dir, n01)
    # the merged segment holds the live documents of segments 0 and 1, in order
    order = np.concatenate([np.flatnonzero(LIVE[:27]), 27 + np.arange(13)])
    for allowed in (None, ALLOWED):
        before = built.search(allowed=allowed)
        segs = [(merged, None), (built.parts[2], live[2])]
        masks = None if allowed is None else [allowed[:27][LIVE[:27]], allowed[27:]]
        seg, pos, sc = built.engine.search(QUERIES, K, segs, allowed=masks)
        offsets = [0, n01]
        after = [[int(order[offsets[g] + p]) for g, p in zip(sr, pr) if p >= 0] for sr, pr in zip(seg, pos)]
        full_ids, full_scores = built.search(k=40, allowed=allowed)
        full = [dict(zip(i, s)) for i, s in zip(full_ids, full_scores)]
        # tie-aware: the dense products of a merged matrix may round differently in the last bit
        assert_same((after, sc), before[0], [list(s[:len(i)]) for i, s in zip(*before)], full)


@pytest.mark.parametrize("kind", ["bm25", "splade", "hybrid"])  # hybrid reopens a dense component
def test_reopened_from_disk_equals_in_memory(kind, request):
    built, _ = request.getfixturevalue(kind)
    engine = engine_class(kind).load(built.root / "engine", built.options)
    parts = [engine.open_segment(built.root / f"seg_{i}", b - a) for i, (a, b) in enumerate(SPLITS)]
    for allowed in (None, ALLOWED):
        a_ids, a_scores = built.search(allowed=allowed)
        b_ids, b_scores = built.search(allowed=allowed, engine=engine, parts=parts)
        assert a_ids == b_ids
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- hybrid
def test_hybrid_equals_fresh_hybrid_retriever(hybrid):
    built, fresh = hybrid
    res = fresh.search(QUERIES, k=K)
    full = fresh.search(QUERIES, k=40)
    ref_ids = [[int(d) for d, _ in res.hits(q)] for q in range(len(QUERIES))]
    ref_scores = [[s for _, s in res.hits(q)] for q in range(len(QUERIES))]
    assert_same(built.search(), ref_ids, ref_scores, [{int(d): s for d, s in full.hits(q)} for q in range(len(QUERIES))])


def test_hybrid_with_allowed_mask_fuses_masked_component_runs(hybrid):
    """The reference: each fresh component's full ranking masked by brute force, cut to depth,
    fused by the fresh HybridRetriever's own fuse_results."""
    from lsr.types import SearchResults

    built, fresh = hybrid
    comp = []
    for c in fresh.components:
        r = c.search(QUERIES, k=int(LIVE.sum()))
        ids = np.full((len(QUERIES), fresh.depth), -1, np.int64)
        scores = np.zeros((len(QUERIES), fresh.depth), np.float32)
        for q in range(len(QUERIES)):
            keep = [j for j in range(r.ids.shape[1]) if r.ids[q, j] >= 0 and ALLOWED[int(r.doc_ids[r.ids[q, j]])]]
            keep = keep[:fresh.depth]
            ids[q, :len(keep)], scores[q, :len(keep)] = r.ids[q, keep], r.scores[q, keep]
        comp.append(SearchResults(ids, scores, r.doc_ids))
    res = fresh.fuse_results(comp, k=K)
    full = fresh.fuse_results(comp, k=40)
    ref_ids = [[int(d) for d, _ in res.hits(q)] for q in range(len(QUERIES))]
    ref_scores = [[s for _, s in res.hits(q)] for q in range(len(QUERIES))]
    assert_same(built.search(allowed=ALLOWED), ref_ids, ref_scores,
                [{int(d): s for d, s in full.hits(q)} for q in range(len(QUERIES))])


# ---------------------------------------------------------------------------- helpers and errors
def test_top_k_rows_and_merge_against_sorting():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (5, 30)).astype(np.float32)  # many ties
    valid = rng.random(30) < 0.7
    for k in (1, 7, 40):
        ids, sc = top_k_rows(scores, valid, k)
        for r in range(5):
            order = sorted(np.flatnonzero(valid), key=lambda j: (-scores[r, j], j))[:k]
            assert ids[r][:len(order)].tolist() == order and np.all(ids[r][len(order):] == -1)
            assert sc[r][:len(order)].tolist() == scores[r, order].tolist()
    a = (np.array([[2, 0, -1]]), np.array([[3.0, 1.0, 0.0]], np.float32))
    b = (np.array([[1, 4]]), np.array([[3.0, 2.0]], np.float32))
    seg, pos, sc = merge_hits([a, b], 1, 4)
    assert list(zip(seg[0], pos[0])) == [(0, 2), (1, 1), (1, 4), (0, 0)]


def test_registry_and_bad_input(bm25, tmp_path):
    built, _ = bm25
    assert set(ENGINES) == {"bm25", "splade", "inference-free", "dense", "maxsim", "muvera", "hybrid"}
    with pytest.raises(ValueError, match="unknown engine"):
        engine_class("nope")
    with pytest.raises(ValueError, match="merge mask"):
        built.engine.merge_segments([(built.parts[0], np.ones(3, bool))], tmp_path)
    with pytest.raises(ValueError, match="live mask"):
        built.engine.search(["x"], 3, [(built.parts[0], np.ones(3, bool))])
    with pytest.raises(TypeError, match="not a search option"):
        built.engine.search(["x"], 3, [(built.parts[0], None)], mode="approximate")
    with pytest.raises(IndexFormatError, match="commit says"):
        built.engine.open_segment(built.root / "seg_0", 99)


def test_damaged_bm25_segment_is_refused(bm25, tmp_path):
    import shutil

    built, _ = bm25
    seg = tmp_path / "seg"
    shutil.copytree(built.root / "seg_1", seg)
    docs = np.load(seg / "docs.npy")
    docs[len(docs) // 2] = 10_000  # same size, a position outside the segment
    np.save(seg / "docs.npy", docs)
    with pytest.raises(IndexFormatError, match="docs.npy"):
        built.engine.open_segment(seg, 13)
    (seg / "docs.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(IndexFormatError):
        built.engine.open_segment(seg, 13)
    with pytest.raises(IndexFormatError, match="engine state"):
        engine_class("bm25").load(tmp_path, BM25Options())


def test_reopen_with_other_options_is_refused(bm25):
    built, _ = bm25
    with pytest.raises(IndexFormatError, match="k1"):
        engine_class("bm25").load(built.root / "engine", BM25Options(k1=1.5))


# ---------------------------------------------------------------------------- multi-vector
@pytest.fixture(scope="module")
def muvera(tmp_path_factory):
    from lsr.retrievers.late_interaction import MuveraRetriever
    from lsr.retrievers.options import MuveraOptions

    options = MuveraOptions(model=str(shared_model("all-MiniLM-L6-v2")), query_max_length=8, fde_reps=2,
                            fde_k_sim=2, fde_d_proj=16, candidates=12)
    built = Built("muvera", options, tmp_path_factory.mktemp("muvera"))
    fresh = Fresh(MuveraRetriever(built.engine.encoder, fde_reps=2, fde_k_sim=2, fde_d_proj=16, candidates=12))
    return built, fresh


def test_muvera_and_maxsim_equal_fresh_builds(muvera, tmp_path):
    """MUVERA: the fresh FDE index's own candidates (masked by brute force, cut to `candidates`)
    re-ranked by its own maxsim_rerank; MaxSim (an engine over the same segments' token vectors):
    the fresh exact MaxSim ranking masked."""
    from lsr.index.maxsim import maxsim_rerank, maxsim_search
    from lsr.retrievers.options import MaxSimOptions

    built, fresh = muvera
    index = fresh.retriever.fde_index
    q = built.engine.encoder.encode_queries(QUERIES)
    live_pos = np.flatnonzero(LIVE)
    for allowed in (None, ALLOWED):
        fde = index.search_fde(q, k=len(live_pos))
        cand = np.full((len(QUERIES), 12), -1, np.int64)
        for r in range(len(QUERIES)):
            ok = [p for p in fde.ids[r] if p >= 0 and (allowed is None or allowed[live_pos[p]])][:12]
            cand[r, :len(ok)] = ok
        res = maxsim_rerank(q, index.docs, cand, k=K)
        full = maxsim_rerank(q, index.docs, cand, k=40)
        as_lists = lambda x: ([[int(live_pos[p]) for p in row if p >= 0] for row in x.ids],
                              [[float(s) for p, s in zip(i, row) if p >= 0] for i, row in zip(x.ids, x.scores)])
        ref_ids, ref_scores = as_lists(res)
        f_ids, f_scores = as_lists(full)
        assert_same(built.search(allowed=allowed), ref_ids, ref_scores,
                    [dict(zip(i, s)) for i, s in zip(f_ids, f_scores)])
    # MaxSim over the same token vectors (the segments' multivectors files, read by a maxsim engine)
    ms = engine_class("maxsim").create(MaxSimOptions(model=str(shared_model("all-MiniLM-L6-v2")), query_max_length=8))
    parts = [ms.open_segment(d, p.n_docs) for d, p in
             ((_retag(built.root / f"seg_{i}", tmp_path / f"m{i}"), built.parts[i]) for i in range(3))]
    exact = maxsim_search(q, index.docs, k=len(live_pos))
    full = [{int(live_pos[p]): float(s) for p, s in zip(i, row) if p >= 0} for i, row in zip(exact.ids, exact.scores)]
    for allowed in (None, ALLOWED):
        ref = [[(d, s) for d, s in sorted(f.items(), key=lambda x: (-x[1], x[0])) if allowed is None or allowed[d]][:K]
               for f in full]
        assert_same(built.search(allowed=allowed, engine=ms, parts=parts), [[d for d, _ in r] for r in ref],
                    [[s for _, s in r] for r in ref], full)


def _retag(src: Path, dst: Path) -> Path:
    """A copy of a MUVERA segment relabelled as a MaxSim one (same token-vector files)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["format"] = "lsr.segment.maxsim"
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


# ---------------------------------------------------------------- learned sparse: many small segments
def _stub_sparse_engine(docs, queries):
    """A SpladeEngine whose 'encoder' returns fixed rows: text 'd<i>' / 'q<i>' is row i."""
    from lsr.collection.engines.base import Engine
    from lsr.collection.engines.sparse import SpladeEngine
    from lsr.types import SparseBatch

    def rows(m, texts):
        sub = m[[int(t[1:]) for t in texts]]
        return SparseBatch(sub.indptr.astype(np.int64), sub.indices.astype(np.int32), sub.data.astype(np.float32),
                           m.shape[1])

    class Enc:
        vocab_size = docs.shape[1]

        def encode_documents(self, texts, show_progress=False):
            return rows(docs, texts)

        def encode_queries(self, texts):
            return rows(queries, texts)

    class Stub(SpladeEngine):
        def __init__(self):
            Engine.__init__(self, SpladeOptions(model="stub"))
            self.encoder = Enc()

    return Stub()


@pytest.mark.parametrize("join_docs,budget", [(1 << 16, 1 << 30), (150, 1 << 30), (1 << 16, 3000)])
def test_small_sparse_segments_searched_together_equal_each_segment_alone(tmp_path, monkeypatch, join_docs, budget):
    """The one-call search of a snapshot's small segments (joined into groups of ``join_docs``,
    at most ``budget`` bytes of joined copies, the rest searched in their own arrays) returns exactly what searching every segment's InvertedIndex alone and merging returns, and
    the documents brute force over the live, allowed ones ranks first (scores to 1e-5), with
    deletes, filters (down to a handful of documents), negative query weights, threads, and a
    segment added to a snapshot already searched."""
    import scipy.sparse as sp

    from lsr.collection.engines import sparse as sparse_engine
    from lsr.collection.engines.base import check_search

    monkeypatch.setattr(sparse_engine, "JOIN_DOCS", join_docs)
    monkeypatch.setattr(sparse_engine, "JOIN_BUDGET_BYTES", budget)
    rng = np.random.default_rng(3)
    vocab, n = 400, 1100
    docs = sp.random(n, vocab, density=0.03, random_state=rng, format="csr", dtype=np.float32)
    docs.data = (docs.data + 0.01).astype(np.float32)
    queries = sp.random(40, vocab, density=0.05, random_state=rng, format="csr", dtype=np.float32)
    queries.data[::7] *= -1  # some negative query weights: zero and negative totals still match
    engine = _stub_sparse_engine(docs, queries)
    cuts = [0, 5, 90, 91, 300, 420, 650, 651, 900, 1100]
    parts = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        d = tmp_path / f"s{i}"
        d.mkdir()
        engine.write_segment([f"d{j}" for j in range(a, b)], d)
        parts.append(engine.open_segment(d, b - a))
    qs = [f"q{i}" for i in range(40)]
    live = [rng.random(p.n_docs) > 0.2 for p in parts]
    cases = [(None, None), (live, None), (live, [rng.random(p.n_docs) < 0.3 for p in parts]),
             (None, [rng.random(p.n_docs) < 0.005 for p in parts])]
    dense_docs = docs.toarray().astype(np.float64)
    for upto in (len(parts) - 1, len(parts)):  # a snapshot, then one more segment appended
        for lives, allowed in cases:
            segs = [(p, None if lives is None else lives[i]) for i, p in enumerate(parts[:upto])]
            allow = None if allowed is None else allowed[:upto]
            for k in (1, 7, 60):
                got = engine.search(qs, k, segs, allowed=allow)
                _, _, masks = check_search(qs, k, segs, allow, {}, "splade")
                q = engine.encode_queries(qs)
                ref = merge_hits([sparse_engine.search_masked(p.index, q, k, m, 1) for (p, _), m in zip(segs, masks)],
                                 len(qs), k)
                for a, b in zip(got, ref):
                    np.testing.assert_array_equal(a, b)
                two = engine.search(qs, k, segs, allowed=allow, threads=3)
                for a, b in zip(got, two):
                    np.testing.assert_array_equal(a, b)
                # brute force: every document sharing a term with the query, live and allowed
                ok = np.concatenate([np.ones(p.n_docs, bool) if m is None else m for (p, _), m in zip(segs, masks)])
                nd = ok.size
                scores = queries.toarray().astype(np.float64) @ dense_docs[:nd].T
                shares = (queries.astype(bool).astype(np.int32) @ docs[:nd].astype(bool).astype(np.int32).T).toarray()
                offs = np.cumsum([0] + [p.n_docs for p, _ in segs])
                for r in range(len(qs)):
                    cand = np.flatnonzero(ok & (shares[r] > 0))
                    order = cand[np.lexsort((cand, -scores[r, cand]))][:k]
                    found = got[0][r] >= 0
                    glob = offs[got[0][r][found]] + got[1][r][found]
                    assert glob.size == order.size
                    np.testing.assert_allclose(got[2][r][found], scores[r, order], rtol=1e-5, atol=1e-6)
                    if order.size:  # the documents clearly above the k-th score are all there
                        assert set(order[scores[r, order] > scores[r, order[-1]] + 1e-5]) <= set(glob)


def test_approximate_dense_segment_searches_live_allowed_documents_through_faiss(tmp_path):
    """An HNSW segment with deletes and a filter: above EXACT_ALLOWED_BELOW allowed, FAISS
    searches with the mask (only live, allowed documents come back, k of them, and nearly the
    exact top k); at or below it, the exact matrix product (equal to brute force)."""
    from lsr.collection.engines import dense as dense_engine
    from lsr.collection.engines.base import Engine
    from lsr.retrievers.options import DenseOptions

    rng = np.random.default_rng(5)
    n, dim = dense_engine.APPROXIMATE_MIN_DOCS + 500, 16
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    qv = rng.standard_normal((30, dim)).astype(np.float32)

    class Enc:
        def __init__(self):
            self.dim = dim

        def encode_documents(self, texts, show_progress=False):
            return vecs[[int(t[1:]) for t in texts]]

        def encode_queries(self, texts):
            return qv[[int(t[1:]) for t in texts]]

    class Stub(dense_engine.DenseEngine):
        def __init__(self):
            Engine.__init__(self, DenseOptions(model="stub", index_type="hnsw"))
            self.encoder = Enc()

    engine = Stub()
    engine.write_segment([f"d{i}" for i in range(n)], tmp_path)
    part = engine.open_segment(tmp_path, n)
    assert part.faiss is not None
    live = rng.random(n) > 0.1
    qs = [f"q{i}" for i in range(30)]
    calls = []
    search = part.faiss.search
    part.faiss.search = lambda *a, **kw: calls.append(kw.get("allowed")) or search(*a, **kw)
    for share in (0.6, 0.05):
        calls.clear()
        allowed = rng.random(n) < share
        ok = live & allowed
        seg, pos, sc = engine.search(qs, 10, [(part, live)], allowed=[allowed])
        exact = qv @ vecs.T
        exact[:, ~ok] = -np.inf
        ref = np.argsort(-exact, axis=1, kind="stable")[:, :10]
        assert (pos >= 0).all() and ok[pos].all()
        np.testing.assert_allclose(sc, np.take_along_axis(qv @ vecs.T, pos, 1), rtol=1e-5, atol=1e-5)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, ref)])
        if share <= dense_engine.EXACT_ALLOWED_BELOW:
            assert not calls
            np.testing.assert_array_equal(pos, ref)
        else:  # FAISS searched, given the live and allowed documents
            assert len(calls) == 1 and np.array_equal(calls[0], ok)
            assert recall >= 0.9, recall


def test_muvera_engine_refuses_an_approximate_index_type():
    """A collection's MUVERA engine scores FDEs exactly: index_type='hnsw' is refused, naming the
    option (before, it was recorded in the options and silently not used)."""
    from lsr.collection.engines.multivector import MuveraEngine
    from lsr.retrievers.options import MuveraOptions

    with pytest.raises(ValueError, match="index_type='hnsw'"):
        MuveraEngine(MuveraOptions(model=str(shared_model("all-MiniLM-L6-v2")), index_type="hnsw"))
