"""The retriever API at its edges: typed options (numpy numbers, NaN, paths), retrievers built
around an encoder object, options after save and load, query and result types."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_model
from lsr import BM25Encoder, BM25Options, BM25Retriever, SearchResults, SpladeOptions, load_retriever

DOCS = (["d1", "d2", "d3"], ["heart disease and blood pressure", "stock markets fell", "heart attack"])


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    r = BM25Retriever()
    r.index(*DOCS)
    return r


# ---------------------------------------------------------------------------- typed options
def test_numpy_numbers_are_numbers_and_nan_is_no_value():
    # a sweep over np.linspace gives numpy scalars: they are numbers, recorded as plain JSON
    opts = BM25Options(k1=np.float32(1.5), b=np.float64(0.25))
    assert (opts.k1, opts.b) == (1.5, 0.25) and type(opts.k1) is float
    assert json.loads(json.dumps(opts.to_dict())) == {"k1": 1.5, "b": 0.25}
    # NaN passes every bound check (nan < 0 is False): refused before any work, not deep in the index
    for bad in ({"k1": float("nan")}, {"k1": float("inf")}, {"b": float("nan")}):
        with pytest.raises(ValueError, match="finite"):
            BM25Retriever(**bad)
    assert SpladeOptions(model=Path("models") / "splade").model == str(Path("models") / "splade")


# ---------------------------------------------------------------------------- an encoder object
def test_an_encoder_object_brings_its_own_settings():
    r = BM25Retriever(encoder=BM25Encoder(k1=2.0, b=0.5))
    assert (r.options.k1, r.options.b) == (2.0, 0.5)  # not the defaults 0.9 / 0.4
    assert BM25Retriever(encoder=BM25Encoder(k1=2.0), k1=2.0).encoder.k1 == 2.0
    with pytest.raises(ValueError, match="k1=1.0 conflicts with the given encoder's k1=2.0"):
        BM25Retriever(encoder=BM25Encoder(k1=2.0), k1=1.0)  # was silently ignored


def test_learned_sparse_options_survive_save_and_load(tmp_path):
    from lsr import SpladeRetriever

    r = SpladeRetriever(str(shared_model("splade-tiny")), doc_max_length=32, query_max_length=8, top_k=5,
                        min_weight=0.1)
    r.index(*DOCS)
    r.save(tmp_path / "s")
    loaded = load_retriever(tmp_path / "s")
    assert loaded.options == r.options  # was doc_max_length=256, query_max_length=64, top_k=None, ...
    with pytest.raises(ValueError, match="doc_max_length=64 conflicts"):
        SpladeRetriever(loaded.encoder, doc_max_length=64)
    assert loaded.search("heart", k=2).hits(0) == r.search("heart", k=2).hits(0)


def test_multivector_options_survive_save_and_load(tmp_path):
    from lsr import MuveraRetriever

    r = MuveraRetriever(str(shared_model("all-MiniLM-L6-v2")), query_max_length=8, fde_reps=2, fde_k_sim=2,
                        fde_d_proj=0, candidates=3)
    r.index(*DOCS)
    r.save(tmp_path / "m")
    loaded = load_retriever(tmp_path / "m")
    got = {k: getattr(loaded.options, k) for k in ("query_max_length", "fde_reps", "fde_k_sim", "fde_d_proj",
                                                   "candidates")}
    assert got == {"query_max_length": 8, "fde_reps": 2, "fde_k_sim": 2, "fde_d_proj": 0, "candidates": 3}
    np.testing.assert_array_equal(loaded.search("heart", k=3).ids, r.search("heart", k=3).ids)


def test_a_checkpoint_without_an_mlm_head_is_refused():
    from lsr import SpladeRetriever

    # a sentence-transformers bi-encoder loads as a masked LM with a random head: noise, not SPLADE
    with pytest.raises(ValueError, match="not a masked-LM checkpoint"):
        SpladeRetriever(str(shared_model("all-MiniLM-L6-v2")))


def test_a_blank_query_matches_nothing_for_learned_sparse():
    from lsr import SpladeRetriever

    r = SpladeRetriever(str(shared_model("splade-tiny")))
    r.index(*DOCS)
    res = r.search(["", "   ", "heart"], k=3)
    assert (res.ids[:2] == -1).all() and res.hits(2)  # not the special tokens' expansion


# ---------------------------------------------------------------------------- queries and results
def test_queries_must_be_texts(bm25):
    np.testing.assert_array_equal(bm25.search(np.array(["heart", "stock"]), k=2).ids,
                                  bm25.search(("heart", "stock"), k=2).ids)
    with pytest.raises(TypeError, match="mapping"):
        bm25.search({"q1": "heart"})  # iterating it searched the id "q1"
    with pytest.raises(TypeError, match="not bytes"):
        bm25.search(b"heart")  # was "query 0 is a int"
    with pytest.raises(TypeError, match="not NoneType"):
        bm25.search(None)


def test_to_run_needs_one_distinct_id_per_row(bm25):
    res = bm25.search(["heart", "stock"], k=2)
    assert set(res.to_run(["a", "b"])) == {"a", "b"}
    with pytest.raises(ValueError, match="'q' names more than one result row"):
        res.to_run(["q", "q"])  # the second row silently replaced the first
    with pytest.raises(TypeError, match="not one string"):
        res.to_run("ab")  # each character was a query id


def test_concat_pads_batches_of_different_widths(bm25):
    one, three = bm25.search(["heart"], k=1), bm25.search(["stock"], k=3)
    both = SearchResults.concat([one, three], 3, one.doc_ids)
    assert both.ids.shape == (2, 3)
    assert both.hits(0) == one.hits(0) and both.hits(1) == three.hits(0)
    assert both.ids[0, 1:].tolist() == [-1, -1] and both.scores[0, 1:].tolist() == [0.0, 0.0]


def test_the_api_names_of_the_cli_pipelines_are_exported():
    import lsr
    from lsr.fusion.tuning import fuse_runs
    from lsr.retrievers.sparse import index_encoded

    assert lsr.fuse_runs is fuse_runs and lsr.index_encoded is index_encoded  # AttributeError before
