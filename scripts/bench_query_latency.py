#!/usr/bin/env python
"""Per-query latency: BM25 vs inference-free vs SPLADE, all on lsr's inverted index.

Every query is encoded and searched on its own (``retriever.search([q], k)``, one thread), as
a RAG pipeline would, in a long-lived process (compiled kernels from the first query); the table
gives mean / p50 / p99 milliseconds, split into query encoding and index search. Document vectors for the learned retrievers come from ``lsr encode`` shards
(``--shards``), so the benchmark needs no document encoding.

    python scripts/bench_query_latency.py --dataset ../shared/data/beir/scifact \\
        --shards /work/cache/splade/scifact/splade-tiny-256 --model ../shared/models/splade-tiny \\
        --idf ../shared/models/opensearch-inference-free-idf/idf.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def timed(fn, queries, rounds: int) -> np.ndarray:
    best = np.full(len(queries), np.inf)
    for _ in range(rounds):
        for i, q in enumerate(queries):
            t = time.perf_counter()
            fn(q)
            best[i] = min(best[i], time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("../shared/data/beir/scifact"))
    ap.add_argument("--shards", type=Path, required=True, help="`lsr encode` output for the dataset's corpus")
    ap.add_argument("--model", default="../shared/models/splade-tiny")
    ap.add_argument("--idf", default="../shared/models/opensearch-inference-free-idf/idf.json")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="each query's best of this many runs counts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for SPLADE query encoding")
    args = ap.parse_args()

    from lsr.encoders.inference_free import InferenceFreeEncoder
    from lsr.io.shards import load_shards
    from lsr.encoders.splade import SpladeEncoder
    from lsr.io.readers import load_beir
    from lsr.retrievers.sparse import BM25Retriever, InferenceFreeRetriever, SpladeRetriever

    from lsr.index.inverted import InvertedIndex

    # a long-lived process (a RAG service): the compiled kernels from the first query on, not the
    # numpy scan a short-lived process uses for its first NUMPY_WORK_BUDGET of small searches
    InvertedIndex.NUMPY_WORK_BUDGET = 0
    ds = load_beir(args.dataset, split="test")
    queries = [ds.queries[q] for q in ds.queries]
    bm25 = BM25Retriever()
    bm25.index(ds.corpus.ids, ds.corpus.all_contents())
    doc_ids, vectors = load_shards(args.shards)
    inf = InferenceFreeRetriever(InferenceFreeEncoder(args.model, idf=args.idf))
    inf.index_vectors(doc_ids, vectors)
    spl = SpladeRetriever(SpladeEncoder(args.model, threads=args.threads))
    spl.index_vectors(doc_ids, vectors)
    spl.encoder.load_model()

    rows = []
    for name, r in (("bm25", bm25), ("inference-free", inf), ("splade", spl)):
        r.search(queries[:5], k=args.k)  # warm-up: numba kernels, model
        total = timed(lambda q, r=r: r.search([q], k=args.k), queries, args.rounds)
        enc = timed(lambda q, r=r: r.encoder.encode_queries([q]), queries, args.rounds)
        qv = [r.encoder.encode_queries([q]) for q in queries]
        idx = r.inverted_index
        search = timed(lambda i: idx.search(qv[i], k=args.k), list(range(len(queries))), args.rounds)
        nnz = np.mean([v.nnz for v in qv])
        rows.append((name, total, enc, search, nnz, idx.nnz))
    base = rows[0][1].mean()
    print(f"# {ds.name}: {len(queries)} queries one at a time, k={args.k}, best of {args.rounds} rounds per query, "
          f"1 search thread, torch threads {args.threads}; times in ms")
    print(f"{'retriever':<16} {'mean':>7} {'p50':>7} {'p99':>7} {'encode':>7} {'search':>7} {'q terms':>8} "
          f"{'postings':>10} {'vs BM25':>8}")
    for name, total, enc, search, nnz, postings in rows:
        print(f"{name:<16} {total.mean():>7.3f} {np.percentile(total, 50):>7.3f} {np.percentile(total, 99):>7.3f} "
              f"{enc.mean():>7.3f} {search.mean():>7.3f} {nnz:>8.1f} {postings:>10} {total.mean() / base:>7.2f}x")


if __name__ == "__main__":
    main()
