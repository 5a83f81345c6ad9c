#!/usr/bin/env python
"""Distributed encoding throughput: `lsr encode` in one process vs Ray with 1 and 2 encoder actors.

One corpus (the first ``--docs`` documents of a BEIR corpus, title + text), one model, one shard
size. The in-process run uses ``--threads`` torch threads; each Ray actor gets one CPU (one torch
thread) on a local, loopback-only Ray instance of ``--ray-cpus`` CPUs. Times exclude reading the
corpus; Ray's start-up and the actors' model loads are reported apart from the encoding. Every
Ray output directory is checked equal (arrays and files) to the in-process one before the table
is printed. ``--kill-after N`` SIGKILLs the first actor's process once N shards have landed in every
Ray run (Ray restarts it and retries its shards; the restart is in the encode time).

    python scripts/bench_distributed.py --dataset ../shared/data/beir/scifact \\
        --model ../shared/models/splade-tiny --docs 1000 --shard-size 100 --workers 1,2

``--search`` measures sharded search instead: a BM25 collection of the first ``--docs``
documents, built unsharded in this process and as ``--shards`` shards by Ray tasks
(:func:`lsr.distributed.build_sharded`), searched with ``--queries`` queries of the dataset, one
query per call (latency: p50/p99) and in batches of ``--batch`` (QPS), in-process
(``Collection.search``) vs :class:`lsr.distributed.ShardedSearcher` (one actor per shard). The
fan-out overhead of a sharded call is its wall time minus the slowest shard actor's own search
time (``last_shard_seconds``): the statistics round, Ray's round trips, the merge. Every sharded
ranking is checked equal to the in-process one (ids, scores to 1e-5) before the table is printed.

    python scripts/bench_distributed.py --search --docs 3000 --queries 300 --shards 4
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchutil import machine_line  # noqa: E402


def same_shards(a: Path, b: Path) -> bool:
    from lsr.io.shards import load_shards, read_progress

    (ia, va), (ib, vb) = load_shards(a), load_shards(b)
    files = sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir()) and all(
        (a / p.name).read_bytes() == (b / p.name).read_bytes() for p in a.iterdir())
    return (ia == ib and read_progress(a) == read_progress(b) and files
            and all(np.array_equal(getattr(va, k), getattr(vb, k)) for k in ("indptr", "indices", "data")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("../shared/data/beir/scifact"))
    ap.add_argument("--model", default="../shared/models/splade-tiny")
    ap.add_argument("--docs", type=int, default=1000, help="first N documents (0: all)")
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--workers", default="1,2", help="comma-separated actor counts")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the in-process run")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--kill-after", type=int, default=None, help="SIGKILL actor 0 once N shards have landed")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    ap.add_argument("--search", action="store_true", help="measure sharded BM25 search instead of encoding")
    ap.add_argument("--shards", type=int, default=4, help="shards of the --search collection")
    ap.add_argument("--queries", type=int, default=300, help="queries of --search (0: all)")
    ap.add_argument("--batch", type=int, default=64, help="queries per call in the batched --search runs")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    if args.search:
        bench_search(args)
        return

    from lsr.distributed import EncoderPool, connect, disconnect, encode_corpus_distributed
    from lsr.encoders.splade import SpladeEncoder
    from lsr.io.readers import read_corpus
    from lsr.io.shards import encode_corpus_to_shards

    corpus = read_corpus(args.dataset / "corpus.jsonl")
    n = args.docs or len(corpus)
    ids, texts = corpus.ids[:n], corpus.all_contents()[:n]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lsr-bench-distributed-") as tmp:
        ref = Path(tmp) / "one"
        enc = SpladeEncoder(args.model, threads=args.threads)
        t = time.perf_counter()
        enc.load_model()
        load = time.perf_counter() - t
        t = time.perf_counter()
        encode_corpus_to_shards(enc, ids, texts, ref, shard_size=args.shard_size)
        secs = time.perf_counter() - t
        rows.append({"run": f"in-process ({args.threads} torch threads)", "workers": 0, "startup_s": load,
                     "encode_s": secs, "docs_per_s": n / secs, "equal": True})
        t = time.perf_counter()
        started = connect(None, num_cpus=args.ray_cpus)  # imports ray, loopback only
        ray_start = time.perf_counter() - t
        import ray

        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}, ray.nodes()
        try:
            for w in (int(x) for x in args.workers.split(",")):
                out = Path(tmp) / f"ray-{w}"
                t = time.perf_counter()
                with EncoderPool(SpladeEncoder(args.model), workers=w) as pool:
                    pids = pool.pids()  # every actor up, its model loaded
                    startup = time.perf_counter() - t
                    landed, killed = [], []

                    def on_shard(i: int) -> None:
                        landed.append(i)
                        if args.kill_after is not None and not killed and len(landed) >= args.kill_after:
                            os.kill(pids[0], signal.SIGKILL)
                            killed.append(len(landed))

                    t = time.perf_counter()
                    encode_corpus_distributed(enc, ids, texts, out, shard_size=args.shard_size, pool=pool,
                                              on_shard=on_shard)
                    secs = time.perf_counter() - t
                    restarted = bool(killed) and pool.pids()[0] != pids[0]
                note = (f", actor 0 SIGKILLed after {killed[0]} shards, restarted: {'yes' if restarted else 'NO'}"
                        if killed else "")
                rows.append({"run": f"Ray, {w} actor{'s' if w > 1 else ''} (1 CPU each){note}", "workers": w,
                             "startup_s": startup, "encode_s": secs, "docs_per_s": n / secs,
                             "killed": bool(killed), "equal": same_shards(ref, out)})
        finally:
            disconnect(started)
    print(f"{machine_line()}; ray {ray.__version__}; {args.dataset.name}, {n} documents, "
          f"{args.model}, shard size {args.shard_size}; local Ray start {ray_start:.1f}s")
    print("| run | start-up s (model load) | encode s | docs/s | equal to in-process |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['run']} | {r['startup_s']:.1f} | {r['encode_s']:.1f} | {r['docs_per_s']:.1f} | "
              f"{'yes' if r['equal'] else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "docs": n, "ray_start_s": ray_start,
                                         "rows": rows}, indent=2) + "\n")
    if not all(r["equal"] for r in rows):
        sys.exit("a distributed run differs from the in-process one")


def _latencies(search, queries: list[str]) -> tuple[np.ndarray, list]:
    out, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(search([q]))
        out.append(time.perf_counter() - t)
    return np.asarray(out), results


def _same_hits(a, b) -> bool:
    ha, hb = a.hits(0), b.hits(0)
    return [d for d, _ in ha] == [d for d, _ in hb] and all(abs(x - y) <= 1e-5 for (_, x), (_, y) in zip(ha, hb))


def bench_search(args: argparse.Namespace) -> None:
    """Sharded vs in-process BM25 search (see the module docstring)."""
    import lsr
    from lsr.distributed import ShardedSearcher, build_sharded, connect, disconnect
    from lsr.io.readers import read_corpus, read_queries

    corpus = read_corpus(args.dataset / "corpus.jsonl")
    n = args.docs or len(corpus)
    docs = [{"_id": i, "title": corpus.titles[j], "text": corpus.texts[j]} for j, i in enumerate(corpus.ids[:n])]
    queries = list(read_queries(args.dataset / "queries.jsonl").values())
    qtexts = queries[: args.queries or len(queries)]
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="lsr-bench-sharded-") as tmp:
        t = time.perf_counter()
        full = lsr.Collection.create(Path(tmp) / "full", "bm25")
        full.add(docs)
        figures["build_inprocess_s"] = time.perf_counter() - t
        t = time.perf_counter()
        started = connect(None, num_cpus=args.ray_cpus)  # imports ray, loopback only
        figures["ray_start_s"] = time.perf_counter() - t
        import ray

        assert {nd["NodeManagerAddress"] for nd in ray.nodes()} == {"127.0.0.1"}, ray.nodes()
        try:
            t = time.perf_counter()
            sharded = build_sharded(Path(tmp) / "sharded", docs, args.shards, "bm25")
            figures["build_sharded_s"] = time.perf_counter() - t
            t = time.perf_counter()
            with ShardedSearcher(sharded.path, batch_size=args.batch) as searcher:
                figures["searcher_start_s"] = time.perf_counter() - t
                reference: list = []
                for run, search in (("in-process Collection.search", lambda q: full.search(q, k=args.k)),
                                    (f"sharded, {args.shards} Ray actors", lambda q: searcher.search(q, k=args.k))):
                    search(qtexts[:20])  # warm: numba, snapshots, caches
                    lat, results = _latencies(search, qtexts)
                    if run.startswith("sharded"):
                        slowest = []
                        for q in qtexts:
                            t = time.perf_counter()
                            searcher.search([q], k=args.k)
                            wall = time.perf_counter() - t
                            slowest.append((wall, max(searcher.last_shard_seconds)))
                        overhead = np.asarray([w - s for w, s in slowest])
                        own = np.asarray([s for _, s in slowest])
                        figures["equal"] = all(_same_hits(a, b) for a, b in zip(reference, results))
                    else:
                        reference = results
                    t = time.perf_counter()
                    for i in range(0, len(qtexts), args.batch):
                        search(qtexts[i:i + args.batch])
                    batched = len(qtexts) / (time.perf_counter() - t)
                    rows.append({"run": run, "qps_one": len(qtexts) / lat.sum(), "p50_ms": 1e3 * np.median(lat),
                                 "p99_ms": 1e3 * np.percentile(lat, 99), "qps_batched": batched})
            sharded.close()
        finally:
            full.close()
            disconnect(started)
    figures.update({"overhead_p50_ms": 1e3 * float(np.median(overhead)),
                    "overhead_p99_ms": 1e3 * float(np.percentile(overhead, 99)),
                    "slowest_shard_p50_ms": 1e3 * float(np.median(own))})
    print(f"{machine_line()}; ray {ray.__version__}; {args.dataset.name}, {n} documents, BM25, {len(qtexts)} "
          f"queries, k={args.k}, {args.shards} shards, local Ray of {args.ray_cpus} CPUs; build in-process "
          f"{figures['build_inprocess_s']:.1f}s, sharded (Ray tasks) {figures['build_sharded_s']:.1f}s; Ray start "
          f"{figures['ray_start_s']:.1f}s, searcher start {figures['searcher_start_s']:.1f}s")
    print(f"| run | QPS (1 query/call) | p50 ms | p99 ms | QPS (batches of {args.batch}) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['qps_one']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps_batched']:.1f} |")
    print(f"fan-out overhead per query (sharded wall - slowest shard's own search): p50 "
          f"{figures['overhead_p50_ms']:.2f} ms, p99 {figures['overhead_p99_ms']:.2f} ms (slowest shard's own "
          f"search p50 {figures['slowest_shard_p50_ms']:.2f} ms); sharded rankings equal to in-process: "
          f"{'yes' if figures['equal'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "docs": n, "rows": rows, **figures},
                                        indent=2) + "\n")
    if not figures["equal"]:
        sys.exit("a sharded ranking differs from the in-process one")


if __name__ == "__main__":
    main()
