"""Fusion latency per query: three runs, depth 1000 (target: under 1 ms per query).

    python scripts/bench_fusion.py [--queries 1000] [--depth 1000] [--docs 100000]

Synthetic runs (seeded): each run retrieves ``depth`` documents per query from a shared pool of
``3 * depth`` ids per query (so candidates overlap, as real sparse/dense runs do). Measured after a
warm-up call (Numba compiled), best of ``--repeat``:

* ``batch``: :func:`lsr.fusion.combine.fuse_arrays` on all queries at once (what ``lsr eval`` and
  :class:`HybridRetriever` do per batch), time / queries, wall clock and process CPU time;
* ``single``: one query per call (a RAG pipeline answering one question; serial kernels), wall
  clock and process CPU time (the CPU column is the honest one on a machine shared with other jobs);
* ``dict``: :func:`lsr.fusion.combine.fuse` on ``{qid: {docid: score}}`` runs, string conversion included.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def make_runs(nq: int, depth: int, n_docs: int, n_runs: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids, scores = [], []
    pools = np.stack([rng.choice(n_docs, size=3 * depth, replace=False) for _ in range(nq)])
    for r in range(n_runs):
        pick = np.argsort(rng.random((nq, 3 * depth)), axis=1)[:, :depth]
        i = np.take_along_axis(pools, pick, axis=1).astype(np.int64)
        s = np.sort(rng.gamma(2.0 + r, 1.0, size=(nq, depth)), axis=1)[:, ::-1] * (r + 1)
        ids.append(i)
        scores.append(s.astype(np.float32))
    return ids, scores


def best_of(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--depth", type=int, default=1000)
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--single", type=int, default=200, help="queries timed one per call")
    args = p.parse_args()

    import numba

    from lsr.fusion.combine import arrays_to_run, fuse, fuse_arrays

    ids, scores = make_runs(args.queries, args.depth, args.docs)
    configs = [("min-max", "wsum"), ("zmuv", "wsum"), ("min-max", "mnz"), ("min-max", "rrf"), ("rank", "sum")]
    vocab = np.array([f"doc{i}" for i in range(args.docs)], dtype=object)
    qids = [f"q{i}" for i in range(args.queries)]
    n_dict = min(args.queries, 200)
    runs = [arrays_to_run(qids[:n_dict], vocab, i[:n_dict], s[:n_dict].astype(np.float64)) for i, s in zip(ids, scores)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"numba threads {numba.get_num_threads()}; 3 runs x depth {args.depth}, {args.queries} queries")
    print(f"| norm | method | batch wall | batch CPU | single wall | single CPU | dict wall ({n_dict} q) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for norm, method in configs:
        kw = dict(norm=norm, method=method, k=args.depth)
        fuse_arrays([i[:2] for i in ids], [s[:2] for s in scores], **kw)  # warm-up (compile)
        batch = best_of(lambda: fuse_arrays(ids, scores, **kw), args.repeat) / args.queries
        batch_cpu = best_of(lambda: fuse_arrays(ids, scores, **kw), args.repeat, time.process_time) / args.queries
        n1 = min(args.single, args.queries)

        def one_by_one() -> None:
            for q in range(n1):
                fuse_arrays([i[q:q + 1] for i in ids], [s[q:q + 1] for s in scores], **kw)
        single = best_of(one_by_one, args.repeat) / n1
        single_cpu = best_of(one_by_one, args.repeat, time.process_time) / n1
        d = best_of(lambda: fuse(runs, **kw), 1) / n_dict
        print(f"| {norm} | {method} | {batch * 1e3:.3f} | {batch_cpu * 1e3:.3f} | {single * 1e3:.3f} | "
              f"{single_cpu * 1e3:.3f} | {d * 1e3:.3f} |")
    print("(milliseconds per query; CPU = process time, all threads)")


if __name__ == "__main__":
    main()
