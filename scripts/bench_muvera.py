#!/usr/bin/env python
"""MUVERA vs exact MaxSim on BEIR datasets: recall, nDCG@10 and queries per second, one run.

For each dataset: token vectors of the corpus and queries (MiniLM stand-in by default, cached
under --cache), exact brute-force MaxSim (the reference run and its QPS), then for each FDE
setting: FDE build time, recall of the exact top-10 within the FDE top-N candidates, nDCG@10
after exact re-ranking, and search QPS (query FDEs + FAISS + re-ranking). Query encoding is
timed separately (it is the same for both methods) and reported on its own line.

    python scripts/bench_muvera.py --datasets scifact nfcorpus
    python scripts/bench_muvera.py --datasets scifact --configs 4:16:4 5:16:20 5:32:20:4096
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _benchutil import machine_line  # noqa: E402  (scripts/ is on sys.path)
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ["4:8:32", "5:16:16", "5:16:32", "5:32:32", "5:32:16", "5:32:32:10240"]


def parse_config(text: str, dim: int):
    from lsr.index.muvera import FDEConfig

    parts = [int(p) for p in text.split(":")]
    if len(parts) not in (3, 4):
        raise SystemExit(f"bad --configs entry {text!r}: use k_sim:d_proj:reps[:final_dim] (d_proj 0 = identity)")
    return FDEConfig(dim=dim, k_sim=parts[0], d_proj=parts[1] or None, reps=parts[2],
                     final_dim=parts[3] if len(parts) == 4 else None)


def ndcg10(qrels, ids, scores, doc_ids, qids):
    from lsr.eval.metrics import evaluate, remove_self_hits

    run = {q: {str(doc_ids[d]): float(s) for d, s in zip(ids[i], scores[i]) if d >= 0} for i, q in enumerate(qids)}
    return evaluate(qrels, remove_self_hits(run), ["ndcg@10"])["ndcg@10"]


def recall_within(exact_top, cand):
    return float(np.mean([len(set(e[e >= 0]) & set(c[c >= 0])) / max(1, (e >= 0).sum())
                          for e, c in zip(exact_top, cand)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--beir", default=str(REPO.parent / "shared" / "data" / "beir"))
    ap.add_argument("--model", default=str(REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    ap.add_argument("--cache", default="/work/cache/dense", help="embedding cache directory")
    ap.add_argument("--doc-max-length", type=int, default=256)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help="FDE settings k_sim:d_proj:reps[:final_dim]")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from lsr.encoders.multivector import MultiVectorEncoder
    from lsr.eval.datasets import load_beir
    from lsr.index.multivectors import maxsim_rerank, maxsim_scores
    from lsr.index.multivectors import _top_k
    from lsr.index.muvera import FDEIndex

    print(f"# bench_muvera  {machine_line()}  "
          f"threads {args.threads}  candidates {args.candidates}", flush=True)
    rows = []
    enc = MultiVectorEncoder(args.model, doc_max_length=args.doc_max_length,
                             query_max_length=args.query_max_length, cache_dir=args.cache)
    for name in args.datasets:
        ds = load_beir(Path(args.beir) / name)
        qids = list(ds.queries)
        qtexts = [ds.queries[q] for q in qids]
        docs = enc.encode_documents(ds.corpus.all_contents(), show_progress=True)
        t = time.perf_counter()
        fresh = MultiVectorEncoder(args.model, doc_max_length=args.doc_max_length,
                                   query_max_length=args.query_max_length)
        queries = fresh.encode_queries(qtexts)
        enc_s = time.perf_counter() - t
        print(f"\n## {name}: {len(docs)} docs, {docs.vectors.shape[0]} doc vectors "
              f"(avg {docs.vectors.shape[0] / len(docs):.0f}), {len(qids)} queries "
              f"(avg {queries.vectors.shape[0] / len(qids):.1f} vectors); query encoding "
              f"{len(qids) / enc_s:.1f} q/s (uncached, CPU)", flush=True)
        docs = docs.__class__(np.ascontiguousarray(docs.vectors), docs.offsets)  # into RAM, as an index would be
        t = time.perf_counter()
        exact_scores = maxsim_scores(queries, docs)
        ex_ids, ex_sc = _top_k(exact_scores, 100)
        bf_s = time.perf_counter() - t
        bf_qps = len(qids) / bf_s
        bf_ndcg = ndcg10(ds.qrels, ex_ids, ex_sc, ds.corpus.ids, qids)
        exact10 = ex_ids[:, :10]
        print(f"{'method':<34}{'dim':>7}{'build s':>9}{'R@10 in top-N':>15}{'nDCG@10':>9}"
              f"{'QPS':>9}{'speed-up':>9}")
        print(f"{'exact MaxSim (brute force)':<34}{'-':>7}{'-':>9}{1.0:>15.3f}{bf_ndcg:>9.4f}{bf_qps:>9.1f}{1.0:>9.1f}",
              flush=True)
        rows.append({"dataset": name, "method": "maxsim", "ndcg@10": bf_ndcg, "qps": bf_qps,
                     "query_encoding_qps": len(qids) / enc_s})
        for text in args.configs:
            cfg = parse_config(text, docs.dim)
            t = time.perf_counter()
            index = FDEIndex.build(docs, cfg, doc_ids=ds.corpus.ids, candidates=args.candidates)
            build_s = time.perf_counter() - t
            index.search(queries.take(range(min(5, len(queries)))), k=10, threads=args.threads)  # warm-up
            t = time.perf_counter()
            qf = index.encoder.encode_queries(queries)
            cand, _ = index.dense.search(qf, k=args.candidates, threads=args.threads)
            ids, sc = maxsim_rerank(queries, index.docs, cand, k=100, threads=args.threads)
            search_s = time.perf_counter() - t
            rec = recall_within(exact10, cand)
            nd = ndcg10(ds.qrels, ids, sc, ds.corpus.ids, qids)
            qps = len(qids) / search_s
            label = f"MUVERA k{cfg.k_sim} p{cfg.d_proj or 'id'} R{cfg.reps}" + (
                f" f{cfg.final_dim}" if cfg.final_dim else "")
            print(f"{label:<34}{cfg.output_dim:>7}{build_s:>9.1f}{rec:>15.3f}{nd:>9.4f}{qps:>9.1f}"
                  f"{qps / bf_qps:>9.1f}", flush=True)
            rows.append({"dataset": name, "method": "muvera", "fde": cfg.to_dict(), "candidates": args.candidates,
                         "recall10_in_candidates": rec, "ndcg@10": nd, "qps": qps, "speedup": qps / bf_qps,
                         "build_seconds": build_s, "delta_ndcg": nd - bf_ndcg})
            del index
        del exact_scores
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nrerun: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")


if __name__ == "__main__":
    main()
