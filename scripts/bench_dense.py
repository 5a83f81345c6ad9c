#!/usr/bin/env python
"""Dense retrieval on BEIR: lsr's FAISS index types vs numpy brute force on the same vectors.

Prints, per dataset and index type: nDCG@10, recall@10 of the exact top-10, build seconds and
search QPS (query vectors given; query encoding is timed on its own line). With --runs, also
reads the ``lsr eval`` output (``<runs>/<dataset>/dense/metrics.json``) and prints its nDCG@10
next to the brute-force figure.

    python scripts/bench_dense.py --datasets scifact nfcorpus --runs /work/cache/runs
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _benchutil import machine_line  # noqa: E402  (scripts/ is on sys.path)
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--beir", default=str(REPO.parent / "shared" / "data" / "beir"))
    ap.add_argument("--model", default=str(REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    ap.add_argument("--cache", default="/work/cache/dense", help="embedding cache directory")
    ap.add_argument("--doc-max-length", type=int, default=256)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivf", "ivfpq"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", default=None, help="directory of lsr eval outputs <runs>/<dataset>/dense")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from lsr.encoders.embedding import DenseEncoder
    from lsr.io.readers import load_beir
    from lsr.metrics import evaluate, remove_self_hits
    from lsr.index.dense import DenseIndex

    print(f"# bench_dense  {machine_line()}  "
          f"threads {args.threads}", flush=True)
    enc = DenseEncoder(args.model, doc_max_length=args.doc_max_length, query_max_length=args.query_max_length,
                       cache_dir=args.cache)
    for name in args.datasets:
        ds = load_beir(Path(args.beir) / name)
        qids = list(ds.queries)
        qtexts = [ds.queries[q] for q in qids]
        d = np.ascontiguousarray(enc.encode_documents(ds.corpus.all_contents(), show_progress=True))
        t = time.perf_counter()
        q = DenseEncoder(args.model, query_max_length=args.query_max_length).encode_queries(qtexts)
        enc_s = time.perf_counter() - t
        cached_q = enc.encode_queries(qtexts)

        def ndcg(ids, scores):
            run = {qq: {ds.corpus.ids[j]: float(s) for j, s in zip(ids[i], scores[i]) if j >= 0}
                   for i, qq in enumerate(qids)}
            return evaluate(ds.qrels, remove_self_hits(run), ["ndcg@10"])["ndcg@10"]

        t = time.perf_counter()
        s = cached_q @ d.T
        ref = np.argsort(-s, axis=1, kind="stable")[:, :101]
        bf_s = time.perf_counter() - t
        bf_ndcg = ndcg(ref, np.take_along_axis(s, ref, 1))
        print(f"\n## {name}: {len(d)} docs x {d.shape[1]}, {len(qids)} queries; query encoding "
              f"{len(qids) / enc_s:.0f} q/s (uncached, CPU); max |cached - fresh query vector| "
              f"{np.abs(cached_q - q).max():.2e}", flush=True)
        print(f"{'index':<28}{'nDCG@10':>9}{'R@10 vs exact':>15}{'build s':>9}{'QPS':>10}")
        print(f"{'numpy brute force':<28}{bf_ndcg:>9.4f}{1.0:>15.3f}{'-':>9}{len(qids) / bf_s:>10.0f}")
        if args.runs:
            m = Path(args.runs) / name / "dense" / "metrics.json"
            if m.is_file():
                print(f"{'lsr eval -r dense (run)':<28}{json.loads(m.read_text())['ndcg@10']:>9.4f}")
        for kind in args.types:
            t = time.perf_counter()
            index = DenseIndex.build(d, doc_ids=ds.corpus.ids, index_type=kind)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            ids, scores = index.search(cached_q, k=101, threads=args.threads)
            search_s = time.perf_counter() - t
            k10 = min(10, len(d))
            rec = np.mean([len(set(a[:k10]) & set(b[:k10])) / k10 for a, b in zip(ids, ref)])
            label = f"{kind} {index.params}" if index.params else kind
            print(f"{label:<28.28}{ndcg(ids, scores):>9.4f}{rec:>15.3f}{build_s:>9.1f}"
                  f"{len(qids) / search_s:>10.0f}", flush=True)
            if kind != "flat":
                print(f"    params: {index.params}")


if __name__ == "__main__":
    main()
