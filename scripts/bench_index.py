#!/usr/bin/env python
"""Exact top-k search speed of lsr's inverted index beside the scipy sparse-product baseline.

Uses the synthetic collection of ../shared/bench/peers_bench.py (Zipf term ids over the BERT
vocabulary, ~120 terms a document, ~30 a query) and its exact top-k and recall helpers, so the
figures are comparable with the peers table in ../shared/bench/README.md.

    python scripts/bench_index.py                        # 100k docs, 1000 queries, idf weights
    python scripts/bench_index.py --ndocs 20000 --nq 200  # quick run
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numba  # noqa: F401  (imported before peers_bench, which pins *_NUM_THREADS=1 for its peers)
from _benchutil import machine_line  # noqa: E402  (scripts/ is on sys.path)

from lsr import InvertedIndex

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "shared" / "bench" / "peers_bench.py"


def load_peers():
    if not PEERS.is_file():
        sys.exit(f"peer harness not found at {PEERS}")
    spec = importlib.util.spec_from_file_location("peers_bench", PEERS)
    module = importlib.util.module_from_spec(spec)
    saved = dict(os.environ)
    spec.loader.exec_module(module)  # it sets OMP/NUMBA/... thread variables: restore ours
    os.environ.clear()
    os.environ.update(saved)
    return module


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ndocs", type=int, default=100_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--weight-model", choices=["iid", "idf"], default="idf")
    ap.add_argument("--repeats", type=int, default=3, help="best of N timed passes")
    args = ap.parse_args()

    peers = load_peers()
    t = time.perf_counter()
    D, Q = peers.make_data(args.ndocs, args.nq, weight_model=args.weight_model)
    print(f"data: {D.shape[0]} docs (avg nnz {D.nnz / D.shape[0]:.1f}), {Q.shape[0]} queries "
          f"(avg nnz {Q.nnz / Q.shape[0]:.1f}), weights {args.weight_model}, gen {time.perf_counter() - t:.1f}s")
    truth = peers.exact_topk(D, Q, args.k)

    rows = []
    # scipy baseline, exactly as the peer harness times it (per query, then 64-query batches)
    out: list = []
    peers.run_scipy(D, Q, args.k, args, out)
    for name, qps, res in out:
        rows.append((name, qps, peers.recall(res, truth, args.k)))

    t = time.perf_counter()
    index = InvertedIndex.from_csr(D)
    build = time.perf_counter() - t
    tmp = Path(tempfile.mkdtemp(prefix="lsr-bench-"))
    index.save(tmp / "idx")
    size = sum(f.stat().st_size for f in (tmp / "idx").iterdir())
    index = InvertedIndex.load(tmp / "idx")
    index.search(Q[:20], k=args.k, threads=1)  # compile / warm caches
    index.search(Q[:20], k=args.k, threads=2)

    qrows = [Q[i] for i in range(Q.shape[0])]

    def per_query():
        return [index.search(q, k=args.k)[0][0] for q in qrows]

    dt, res = best_of(per_query, args.repeats)
    rows.append(("lsr InvertedIndex.search (per query, threads=1)", len(qrows) / dt, peers.recall(res, truth, args.k)))
    for threads in (1, 2):
        dt, (ids, _) = best_of(lambda: index.search(Q, k=args.k, threads=threads), args.repeats)
        rows.append((f"lsr InvertedIndex.search (batch, threads={threads})", Q.shape[0] / dt,
                     peers.recall(list(ids), truth, args.k)))
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nmachine: {machine_line()}")
    print(f"lsr build {build:.2f}s, index size {size / 2**20:.1f} MiB ({size / D.nnz:.2f} bytes/posting)\n")
    print(f"| system (exact top-{args.k}) | QPS | recall@{args.k} |")
    print("|---|---:|---:|")
    for name, qps, r in rows:
        print(f"| {name} | {qps:,.0f} | {r:.4f} |")


if __name__ == "__main__":
    main()
