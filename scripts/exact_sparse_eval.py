#!/usr/bin/env python
"""Brute-force exact nDCG@10 of learned sparse vectors, next to lsr's inverted-index run.

Scores every (query, document) pair with a scipy sparse product of the *same* vectors lsr
indexes (document shards from ``lsr encode``, queries from the SPLADE or inference-free query
encoder), keeps the top ``depth`` per query, drops self hits as ``lsr eval`` does, and evaluates
with the trec_eval-exact metrics. With ``--lsr-run DIR`` it also reads an ``lsr eval`` output
directory and prints both nDCG@10 values and their difference.

    python scripts/exact_sparse_eval.py ../shared/data/beir/scifact \\
        --shards /work/cache/splade/scifact/splade-tiny-256 --retriever splade \\
        --model ../shared/models/splade-tiny --lsr-run /work/cache/runs/scifact/splade
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def exact_run(qids, queries, doc_ids, docs, depth: int) -> dict[str, dict[str, float]]:
    """Top-``depth`` documents per query by exact inner product (float64 accumulation)."""
    d = docs.to_scipy().astype(np.float64).T.tocsc()
    run = {}
    for s in range(0, len(qids), 64):
        scores = (queries[s:s + 64].to_scipy().astype(np.float64) @ d).toarray()
        for i, row in enumerate(scores):
            top = np.argpartition(-row, min(depth, row.size - 1))[:depth]
            top = top[row[top] > 0]
            run[qids[s + i]] = {doc_ids[j]: float(row[j]) for j in top}
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="BEIR directory (queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--shards", type=Path, required=True, help="document vectors from `lsr encode`")
    ap.add_argument("--retriever", choices=["splade", "inference-free"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--idf", default=None)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--lsr-run", type=Path, default=None, help="an `lsr eval` output directory to compare with")
    args = ap.parse_args()

    from lsr.io.shards import load_shards
    from lsr.io.readers import load_beir
    from lsr.metrics import evaluate, remove_self_hits

    ds = load_beir(args.dataset, split="test")
    doc_ids, docs = load_shards(args.shards)
    if args.retriever == "splade":
        from lsr.encoders.splade import SpladeEncoder

        enc = SpladeEncoder(args.model, query_max_length=args.query_max_length)
    else:
        from lsr.encoders.inference_free import InferenceFreeEncoder

        enc = InferenceFreeEncoder(args.model, idf=args.idf, query_max_length=args.query_max_length)
    qids = list(ds.queries)
    t = time.perf_counter()
    queries = enc.encode_queries([ds.queries[q] for q in qids])
    run = remove_self_hits(exact_run(qids, queries, doc_ids, docs, args.depth + 1))
    run = {q: dict(sorted(d.items(), key=lambda x: (-x[1], x[0]))[:args.depth]) for q, d in run.items()}
    exact = evaluate(ds.qrels, run, ["ndcg@10", "recall@100", "recall@1000"])
    print(f"{ds.name} {args.retriever}: exact brute force ({time.perf_counter() - t:.1f}s, {len(qids)} queries, "
          f"{len(doc_ids)} docs, {docs.nnz} postings)")
    for m, v in exact.items():
        print(f"  exact {m:<12} {v:.4f}")
    if args.lsr_run is not None:
        lsr = json.loads((args.lsr_run / "metrics.json").read_text())
        print(f"  lsr   ndcg@10      {lsr['ndcg@10']:.4f}   |diff| = {abs(lsr['ndcg@10'] - exact['ndcg@10']):.5f}")


if __name__ == "__main__":
    main()
