#!/usr/bin/env python
"""Reproduction matrix: every published lsr number is one `lsr eval` command.

Reads reproduce/beir.toml (conditions x datasets, each with the expected nDCG@10 and, where one
exists, an independent reference figure), runs the commands, and checks the results:

    python scripts/reproduce.py                                  # the main conditions, scifact
    python scripts/reproduce.py --conditions all --datasets scifact,nfcorpus
    python scripts/reproduce.py --datasets scifact,nfcorpus --conditions bm25,splade
    python scripts/reproduce.py --list

A condition with a `train` command (the trained inference-free models) runs it first; its model
goes to runs/<dataset>/<condition>/model. Outputs go to runs/<dataset>/<condition>/ (run.trec,
metrics.json, ...); a markdown table is
printed and written to runs/REPRODUCE.md with `lsr report`'s chart beside it. The exit code is
non-zero if any nDCG@10 is off its expected value by more than the condition's tolerance.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", type=Path, default=REPO / "reproduce" / "beir.toml")
    ap.add_argument("--datasets", default="scifact", help="comma-separated dataset names")
    ap.add_argument("--conditions", default="main",
                    help="comma-separated condition names, 'main' (those not marked main = false) or 'all'")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "beir")
    ap.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models")
    ap.add_argument("--output", type=Path, default=REPO / "runs")
    ap.add_argument("--reuse", action="store_true", help="skip conditions whose metrics.json already exists")
    ap.add_argument("--list", action="store_true", help="list the conditions and exit")
    args = ap.parse_args()

    matrix = tomllib.loads(args.matrix.read_text())
    conditions = matrix["condition"]
    if args.list:
        for c in conditions:
            print(f"{c['name']:<16} {'main' if c.get('main', True) else '    '}  {c['description']}")
        return 0
    if args.conditions == "all":
        wanted = None
    elif args.conditions == "main":
        wanted = {c["name"] for c in conditions if c.get("main", True)}
    else:
        wanted = set(args.conditions.split(","))
    unknown = (wanted or set()) - {c["name"] for c in conditions}
    if unknown:
        ap.error(f"unknown conditions: {', '.join(sorted(unknown))}")
    lsr = Path(sys.executable).with_name("lsr")
    rows, failed = [], 0
    for dataset in args.datasets.split(","):
        data = args.data_root / dataset
        if not (data / "corpus.jsonl").is_file():
            ap.error(f"no BEIR dataset at {data}")
        chosen = [c for c in conditions if wanted is None or c["name"] in wanted]
        # shared encodings: each model's corpus is encoded once and reused by every condition
        for step in matrix.get("prepare", []):
            if not any(c.get("uses") and step["name"] in c["uses"] for c in chosen):
                continue
            out = args.output / dataset / step["name"]
            if step.get("creates"):  # a step that writes one file (`lsr idf`): done once it exists
                if (out / step["creates"]).is_file():
                    continue
            elif (out / "progress.json").is_file() and json.loads((out / "progress.json").read_text()).get("complete"):
                continue
            cmd = step["command"].format(lsr=lsr, dataset=data, output=out, models=args.models,
                                         runs=args.output / dataset)
            print(f"\n$ {cmd}", file=sys.stderr, flush=True)
            if subprocess.run(shlex.split(cmd), cwd=REPO).returncode != 0:
                print(f"prepare step {step['name']} failed", file=sys.stderr)
                return 1
        for c in chosen:
            out = args.output / dataset / c["name"]
            cmd = c["command"].format(lsr=lsr, dataset=data, output=out, models=args.models, runs=args.output / dataset)
            t = time.perf_counter()
            if c.get("train") and not (args.reuse and (out / "metrics.json").is_file()):
                # a training step first (`lsr train`: resumes from its checkpoints, teacher scores cached)
                train = c["train"].format(lsr=lsr, dataset=data, output=out, models=args.models,
                                          runs=args.output / dataset)
                print(f"\n$ {train}", file=sys.stderr, flush=True)
                if subprocess.run(shlex.split(train), cwd=REPO).returncode != 0:
                    rows.append((dataset, c, None, time.perf_counter() - t))
                    failed += 1
                    continue
            if not (args.reuse and (out / "metrics.json").is_file()):
                print(f"\n$ {cmd}", file=sys.stderr, flush=True)
                proc = subprocess.run(shlex.split(cmd), cwd=REPO)
                if proc.returncode != 0:
                    rows.append((dataset, c, None, time.perf_counter() - t))
                    failed += 1
                    continue
            ndcg = json.loads((out / "metrics.json").read_text())["ndcg@10"]
            rows.append((dataset, c, ndcg, time.perf_counter() - t))
            expected = c.get("expected", {}).get(dataset)
            if expected is not None and abs(ndcg - expected) > c.get("tolerance", 0.002):
                failed += 1

    lines = ["| dataset | condition | nDCG@10 | expected | reference | status | seconds |",
             "|---|---|---:|---:|---:|---|---:|"]
    for dataset, c, ndcg, secs in rows:
        expected = c.get("expected", {}).get(dataset)
        ref = c.get("reference", {}).get(dataset)
        if ndcg is None:
            status = "FAILED"
        elif expected is None:
            status = "new"
        else:
            status = "ok" if abs(ndcg - expected) <= c.get("tolerance", 0.002) else "MISMATCH"
        fmt = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
        lines.append(f"| {dataset} | {c['name']} | {fmt(ndcg)} | {fmt(expected)} | {fmt(ref)} | {status} | {secs:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "REPRODUCE.md").write_text(table + "\n")
    dirs = [str(args.output / d / c["name"]) for d, c, n, _ in rows if n is not None]
    if dirs:
        subprocess.run([str(lsr), "report", *dirs, "--output", str(args.output / "report.md"),
                        "--plot", str(args.output / "report.png")], cwd=REPO, env=dict(os.environ))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
