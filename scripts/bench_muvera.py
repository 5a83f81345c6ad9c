#!/usr/bin/env python
"""MUVERA vs exact MaxSim on BEIR datasets: recall, nDCG@10 and queries per second, one run.

For each dataset: token vectors of the corpus and queries (MiniLM by default, cached under
--cache), exact brute-force MaxSim over a contiguous float32 token matrix (the reference run and
its QPS: one BLAS product per query batch and document block, Numba max/sum reduction), then for
each FDE setting: FDE build time, recall of the exact top-10 within the FDE top-100, nDCG@10
after exact re-ranking of the FDE top --rerank, and search QPS (query FDEs + FAISS flat search +
re-ranking of the float16 store). Both methods are timed in the same run, --repeats times
interleaved, best time kept; query *encoding* (the transformer) is excluded from both and
reported on its own line.

    python scripts/bench_muvera.py --datasets scifact nfcorpus
    python scripts/bench_muvera.py --datasets scifact --configs 3:32:4 3:64:10 3:128:10 --rerank 100
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
DEFAULT_CONFIGS = ["3:32:4", "3:64:10", "3:128:10"]  # about 1k, 5k and 10k dimensions
RECALL_DEPTH = 100


def parse_config(text: str, dim: int):
    from lsr.index.muvera import FDEConfig

    parts = [int(p) for p in text.split(":")]
    if len(parts) not in (3, 4):
        raise SystemExit(f"bad --configs entry {text!r}: use k_sim:d_proj:reps[:final_dim] (d_proj 0 = identity)")
    return FDEConfig(dim=dim, k_sim=parts[0], d_proj=parts[1] or None, reps=parts[2],
                     final_dim=parts[3] if len(parts) == 4 else None)


def ndcg10(qrels, ids, scores, doc_ids, qids):
    from lsr.metrics import evaluate, remove_self_hits

    run = {q: {str(doc_ids[d]): float(s) for d, s in zip(ids[i], scores[i]) if d >= 0} for i, q in enumerate(qids)}
    return evaluate(qrels, remove_self_hits(run), ["ndcg@10"])["ndcg@10"]


def recall_within(exact_top, cand):
    return float(np.mean([len(set(e[e >= 0]) & set(c[c >= 0])) / max(1, (e >= 0).sum())
                          for e, c in zip(exact_top, cand)]))


def timed(fn) -> tuple[float, object]:
    """Wall time of one call and its result."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


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
    ap.add_argument("--rerank", type=int, nargs="+", default=None,
                    help="FDE candidates re-ranked by exact MaxSim (default: the library default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (interleaved, best kept)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from lsr.encoders.multivector import MultiVectorEncoder
    from lsr.io.readers import load_beir
    from lsr.index.maxsim import MultiVectors, _top_k, maxsim_rerank, maxsim_scores
    from lsr.index.muvera import DEFAULT_CANDIDATES, FDEIndex

    reranks = args.rerank or [DEFAULT_CANDIDATES]
    print(f"# bench_muvera  {machine_line()}  threads {args.threads}  repeats {args.repeats} "
          f"(best time)  recall depth {RECALL_DEPTH}  query encoding excluded", flush=True)
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
        nq = len(qids)
        print(f"\n## {name}: {len(docs)} docs, {docs.vectors.shape[0]} doc vectors "
              f"(avg {docs.vectors.shape[0] / len(docs):.0f}), {nq} queries "
              f"(avg {queries.vectors.shape[0] / nq:.1f} vectors); query encoding "
              f"{nq / enc_s:.1f} q/s (uncached, CPU, excluded below)", flush=True)
        docs32 = MultiVectors(np.ascontiguousarray(docs.vectors, dtype=np.float32), docs.offsets)

        def brute_force():
            return _top_k(maxsim_scores(queries, docs32), RECALL_DEPTH)

        indexes = []
        for text in args.configs:
            cfg = parse_config(text, docs.dim)
            t = time.perf_counter()
            index = FDEIndex.build(docs, cfg, doc_ids=ds.corpus.ids)
            indexes.append((cfg, index, time.perf_counter() - t))
            index.search(queries.take(range(min(5, nq))), k=10, threads=args.threads)  # warm-up (JIT)

        def muvera(index, c):
            def run():  # what FDEIndex.search does, keeping the FDE top-100 for the recall column
                cand, _ = index.search_fde(queries, max(c, RECALL_DEPTH), threads=args.threads)
                return cand, maxsim_rerank(queries, index.docs, cand[:, :c], k=RECALL_DEPTH, threads=args.threads)
            return run

        # interleaved repeats: brute force and every MUVERA setting see the same machine load
        times: dict = {}
        results: dict = {}
        for _ in range(args.repeats):
            dt, results["bf"] = timed(brute_force)
            times["bf"] = min(times.get("bf", float("inf")), dt)
            for i, (cfg, index, _) in enumerate(indexes):
                for c in reranks:
                    dt, results[i, c] = timed(muvera(index, c))
                    times[i, c] = min(times.get((i, c), float("inf")), dt)
        ex_ids, ex_sc = results["bf"]
        bf_qps = nq / times["bf"]
        bf_ndcg = ndcg10(ds.qrels, ex_ids, ex_sc, ds.corpus.ids, qids)
        exact10 = ex_ids[:, :10]
        print(f"{'method':<30}{'dim':>7}{'build s':>9}{'R@10 in top-100':>17}{'rerank':>8}{'nDCG@10':>9}"
              f"{'QPS':>9}{'speed-up':>9}")
        print(f"{'exact MaxSim (brute force)':<30}{'-':>7}{'-':>9}{1.0:>17.3f}{'-':>8}{bf_ndcg:>9.4f}"
              f"{bf_qps:>9.1f}{1.0:>9.1f}", flush=True)
        rows.append({"dataset": name, "method": "maxsim", "ndcg@10": bf_ndcg, "qps": bf_qps,
                     "query_encoding_qps": nq / enc_s})
        for i, (cfg, index, build_s) in enumerate(indexes):
            for c in reranks:
                cand, (ids, sc) = results[i, c]
                rec = recall_within(exact10, cand[:, :RECALL_DEPTH])
                nd = ndcg10(ds.qrels, ids, sc, ds.corpus.ids, qids)
                qps = nq / times[i, c]
                label = f"MUVERA k{cfg.k_sim} p{cfg.d_proj or 'id'} R{cfg.reps}" + (
                    f" f{cfg.final_dim}" if cfg.final_dim else "")
                print(f"{label:<30}{cfg.output_dim:>7}{build_s:>9.1f}{rec:>17.3f}{c:>8}{nd:>9.4f}{qps:>9.1f}"
                      f"{qps / bf_qps:>9.1f}", flush=True)
                rows.append({"dataset": name, "method": "muvera", "fde": cfg.to_dict(), "rerank": c,
                             "recall10_in_top100": rec, "ndcg@10": nd, "qps": qps, "speedup": qps / bf_qps,
                             "build_seconds": build_s, "delta_ndcg": nd - bf_ndcg})
        del indexes, results, docs32
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nrerun: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")


if __name__ == "__main__":
    main()
