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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
