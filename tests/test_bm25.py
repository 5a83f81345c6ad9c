"""BM25 encoder: analyzer behaviour, Lucene norms, scores against an independent formula,
and the published Anserini BM25 flat nDCG@10 on the shared BEIR data."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lsr import BM25Encoder, EnglishAnalyzer, InvertedIndex, evaluate, load_beir
from lsr.encoders.bm25 import lucene_norm_decode, lucene_norm_encode
from lsr.retrievers.sparse import BM25Retriever

from conftest import beir_dataset


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The QUICK brown foxes", ["quick", "brown", "fox"]),
        ("U.S.A. and e.g.", ["u.s.a", "e.g"]),          # MidLetter '.' joins letters
        ("3.14 and 1,000", ["3.14", "1,000"]),           # MidNum joins digits
        ("COVID-19 T-cells", ["covid", "19", "t", "cell"]),  # hyphens split
        ("the patient's doctors' notes", ["patient", "doctor", "note"]),  # possessive, trailing '
        ("IL6 p53 h2o", ["il6", "p53", "h2o"]),          # letters and digits join
        ("running runs ran", ["run", "run", "ran"]),
        ("vs. us ms", ["vs", "us", "ms"]),               # words of 1-2 letters are not stemmed
        ("pathology possibly assembly", ["patholog", "possibl", "assembl"]),  # -logi, -bli rules
        ("copyright © 2020 m² H₂O", ["copyright", "©", "2020", "m", "h", "o"]),
        ("", []),
        ("... !!! ---", []),
        ("a an and are as at be but by for if in into is it no not of on or such that the their then "
         "there these they this to was will with", []),
    ],
)
def test_analyzer(text, expected):
    assert EnglishAnalyzer()(text) == expected


def test_porter_matches_lucene_stems():
    """3,000 word -> stem pairs that Lucene's PorterStemFilter (Anserini) produced on scifact/nfcorpus."""
    from conftest import TESTS
    from lsr.encoders._porter import porter_stem

    lines = (TESTS / "data" / "lucene_porter_stems.tsv").read_text().splitlines()
    pairs = [l.split("\t") for l in lines if not l.startswith("#")]
    assert len(pairs) == 3000
    wrong = [(w, s, porter_stem(w)) for w, s in pairs if porter_stem(w) != s]
    assert not wrong, wrong[:10]


def test_other_stemmers():
    assert EnglishAnalyzer(stemmer="snowball:porter")("pathology") == ["pathologi"]
    assert EnglishAnalyzer(stemmer=None)("The Pathology") == ["pathology"]
    with pytest.raises(ValueError, match="unknown stemmer"):
        EnglishAnalyzer(stemmer="krovetz")


def _lucene_int_to_byte4(i: int) -> int:
    """Scalar port of org.apache.lucene.util.SmallFloat.intToByte4 (independent of lsr's numpy code)."""
    def long_to_int4(x: int) -> int:
        nbits = x.bit_length()
        if nbits < 4:
            return x
        shift = nbits - 4
        return ((x >> shift) & 0x07) | ((shift + 1) << 3)

    free = 255 - long_to_int4(2**31 - 1)
    return i if i < free else free + long_to_int4(i - free)


def _lucene_byte4_to_int(b: int) -> int:
    free = 24
    if b < free:
        return b
    i = b - free
    bits, shift = i & 0x07, (i >> 3) - 1
    return free + (bits if shift == -1 else (bits | 0x08) << shift)


def test_lucene_norms_match_scalar_port():
    lengths = np.array(list(range(0, 3000)) + [10**5, 123456, 2**31 - 1], dtype=np.int64)
    enc = lucene_norm_encode(lengths)
    assert enc.tolist() == [_lucene_int_to_byte4(int(x)) for x in lengths]
    assert lucene_norm_decode(enc).tolist() == [_lucene_byte4_to_int(int(b)) for b in enc]
    assert enc.max() <= 255


def _reference_scores(docs, queries, k1=0.9, b=0.4):
    """BM25 straight from the formula, with Lucene's quantised lengths (float64)."""
    an = EnglishAnalyzer()
    toks = [an(d) for d in docs]
    n = sum(1 for t in toks if t)
    avgdl = sum(map(len, toks)) / n
    df = Counter(t for d in toks for t in set(d))
    out = np.zeros((len(queries), len(docs)))
    for qi, q in enumerate(queries):
        for term, count in Counter(an(q)).items():
            if term not in df:
                continue
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            for di, d in enumerate(toks):
                tf = d.count(term)
                if tf:
                    dl = _lucene_byte4_to_int(_lucene_int_to_byte4(len(d)))
                    out[qi, di] += count * idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))
    return out


def test_bm25_scores_match_formula(tiny_beir):
    ds = load_beir(tiny_beir)
    texts = ds.corpus.all_contents() + ["heart heart heart " * 40, "blood"]
    queries = ["what causes heart disease", "blood pressure pressure", "nothing matches zzzz", ""]
    enc = BM25Encoder()
    docs = enc.fit_documents(texts)
    got = (enc.encode_queries(queries).to_scipy() @ docs.to_scipy().T).toarray()
    np.testing.assert_allclose(got, _reference_scores(texts, queries), rtol=1e-5, atol=1e-6)
    # the same through the inverted index
    ids, scores = InvertedIndex.from_csr(docs).search(enc.encode_queries(queries), k=3)
    np.testing.assert_allclose(scores[0], np.sort(got[0])[::-1][:3], rtol=1e-6)


def test_bm25_encoder_errors_and_roundtrip(tmp_path):
    enc = BM25Encoder()
    with pytest.raises(RuntimeError, match="not fitted"):
        enc.encode_queries(["x"])
    with pytest.raises(ValueError, match="empty corpus"):
        enc.fit_documents([])
    with pytest.raises(ValueError):
        BM25Encoder(b=2.0)
    docs = enc.fit_documents(["alpha beta", "beta gamma gamma"])
    enc.save(tmp_path)
    again = BM25Encoder.load(tmp_path)
    q = ["gamma beta", "alpha"]
    a, b = enc.encode_queries(q), again.encode_queries(q)
    assert (a.indices == b.indices).all() and (a.data == b.data).all()
    d2 = again.encode_documents(["alpha beta", "beta gamma gamma"])
    np.testing.assert_array_equal(d2.data, docs.data)
    assert docs.decode(1)[0][0] == "gamma"


def test_term_counts_match_counter():
    """Repeated terms are merged per row (sorted term ids, float32 counts); empty texts and
    unknown query terms give empty rows."""
    enc = BM25Encoder()
    enc.fit_documents(["heart heart attack", "stock market", "heart market market"])
    texts = ["market heart market", "", "unknown words", "attack attack attack stock"]
    q = enc.encode_queries(texts)
    assert q.indptr.tolist() == [0, 2, 2, 2, 4]
    for i, text in enumerate(texts):
        want = Counter(enc._term_ids[t] for t in enc.analyzer(text) if t in enc._term_ids)
        row = slice(q.indptr[i], q.indptr[i + 1])
        assert q.indices[row].tolist() == sorted(want)
        assert q.data[row].tolist() == [float(want[t]) for t in sorted(want)]
    assert q.data.dtype == np.float32 and enc.encode_queries([]).indptr.tolist() == [0]


@pytest.mark.parametrize("name, anserini", [("scifact", 0.6789), ("nfcorpus", 0.3218)])
def test_bm25_matches_anserini_flat(name, anserini):
    ds = load_beir(beir_dataset(name))
    r = BM25Retriever()
    r.index(ds.corpus.ids, ds.corpus.all_contents())
    qids = list(ds.queries)
    res = r.search([ds.queries[q] for q in qids], k=1000)
    ndcg = evaluate(ds.qrels, res.to_run(qids), ["ndcg@10"])["ndcg@10"]
    assert abs(ndcg - anserini) < 0.005, f"{name}: nDCG@10 {ndcg:.4f} vs Anserini {anserini}"
