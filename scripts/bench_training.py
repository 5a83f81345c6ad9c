"""Training throughput: lsr's inference-free loop vs sentence-transformers' SparseEncoderTrainer.

Both train the same document model (splade-tiny by default) with the same IDF query side, batch
size (queries per step), group size (documents per query), document length limit and the same
documents, with a KL distillation loss on teacher scores plus the document FLOPS term:

* lsr: ``lsr.encoders.sparse_training.train_inference_free`` (loss="kl");
* sentence-transformers (>= 5): ``SparseEncoderTrainer`` with ``SpladeLoss`` around
  ``SparseDistillKLDivLoss``, a ``Router`` with ``SparseStaticEmbedding`` (the IDF table, frozen)
  for queries and ``MLMTransformer`` + ``SpladePooling`` for documents.

Documents/s = documents through forward and backward per second of optimizer steps, the first
``--skip`` steps left out (allocation, lazy imports). Rounds alternate lsr and sentence-transformers
so that a change in machine load hits both. Prints one table.

    python scripts/bench_training.py --steps 6 --batch-size 4 --group-size 8 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def load_texts(beir: Path, n_docs: int, n_queries: int) -> tuple[list[str], list[str]]:
    docs, queries = [], []
    with open(beir / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs.append(f"{d.get('title', '')} {d.get('text', '')}".strip())
            if len(docs) == n_docs:
                break
    with open(beir / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            queries.append(json.loads(line)["text"])
            if len(queries) == n_queries:
                break
    if len(docs) < n_docs or len(queries) < n_queries:
        sys.exit(f"{beir}: needs {n_docs} documents and {n_queries} queries")
    return docs, queries


def bench_lsr(args, docs, queries, teacher) -> list[float]:
    """Seconds per step and documents per step of lsr's loop."""
    from lsr.encoders.sparse_training import TrainingData, TrainSettings, train_inference_free

    g = args.group_size
    data = TrainingData(queries, docs, [np.arange(i * g, (i + 1) * g) for i in range(len(queries))],
                        [t.astype(np.float32) for t in teacher], None)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, group_size=g, lr=2e-5,
                             doc_max_length=args.max_length, flops_weight=args.flops_weight, flops_warmup=0,
                             checkpoint_every=0, torch_threads=args.threads, seed=1)
    # every query's group is its own documents and the epoch order is a permutation of the queries,
    # so each step sees batch_size * group_size distinct documents, exactly as sentence-transformers
    with tempfile.TemporaryDirectory() as out:
        summary = train_inference_free(data, args.model, args.idf, out, settings)
    return [(h["seconds"], h["docs"]) for h in summary["history"]]


def bench_st(args, docs, queries, teacher) -> list[float]:
    """Seconds per step and documents per step of SparseEncoderTrainer."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments
    from sentence_transformers.sparse_encoder import losses
    from sentence_transformers.sparse_encoder.modules import (MLMTransformer, Router, SparseStaticEmbedding,
                                                              SpladePooling)
    from transformers import TrainerCallback

    if args.threads:
        torch.set_num_threads(args.threads)
    mlm = MLMTransformer(args.model, max_seq_length=args.max_length)
    query = SparseStaticEmbedding.from_json(args.idf, tokenizer=mlm.tokenizer, frozen=True)
    router = Router.for_query_document(query_modules=[query],
                                       document_modules=[mlm, SpladePooling(pooling_strategy="max")])
    model = SparseEncoder(modules=[router], similarity_fn_name="dot")
    g = args.group_size
    columns = {"query": queries, "positive": [docs[i * g] for i in range(len(queries))]}
    for j in range(1, g):
        columns[f"negative_{j}"] = [docs[i * g + j] for i in range(len(queries))]
    columns["label"] = [t.tolist() for t in teacher]
    dataset = Dataset.from_dict(columns)
    loss = losses.SpladeLoss(model, loss=losses.SparseDistillKLDivLoss(model, temperature=1.0),
                             document_regularizer_weight=args.flops_weight, query_regularizer_weight=None,
                             use_document_regularizer_only=True)
    times: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append((time.perf_counter() - self.t, args.batch_size * g))

    with tempfile.TemporaryDirectory() as out:
        targs = SparseEncoderTrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=2e-5,
            warmup_ratio=0.1, weight_decay=0.01, save_strategy="no", logging_strategy="no", report_to="none",
            seed=1, dataloader_drop_last=True, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
            router_mapping={"query": "query", "positive": "document",
                            **{f"negative_{j}": "document" for j in range(1, g)}})
        trainer = SparseEncoderTrainer(model=model, args=targs, train_dataset=dataset, loss=loss,
                                       callbacks=[Timer()])
        trainer.train()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(SHARED / "models" / "splade-tiny"))
    p.add_argument("--idf", default=str(SHARED / "models" / "opensearch-inference-free-idf" / "idf.json"))
    p.add_argument("--data", default=str(SHARED / "data" / "beir" / "scifact"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--skip", type=int, default=1, help="first steps of each run left out of the rate")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--flops-weight", type=float, default=0.08)
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for both (1: on the shared 2-core machine two threads ran 2x slower under load)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=["lsr", "st"], default=None)
    args = p.parse_args()
    if args.steps <= args.skip:
        sys.exit("--steps must exceed --skip")
    n_q = args.steps * args.batch_size
    docs, queries = load_texts(Path(args.data), n_q * args.group_size, n_q)
    rng = np.random.default_rng(0)
    teacher = [rng.random(args.group_size).astype(np.float32) for _ in range(n_q)]
    runners = {"lsr": bench_lsr, "sentence-transformers": bench_st}
    if args.only:
        runners = {k: v for k, v in runners.items() if k == {"lsr": "lsr", "st": "sentence-transformers"}[args.only]}
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds):
        for name, fn in runners.items():
            steps = fn(args, docs, queries, teacher)[args.skip:]
            rate = sum(d for _, d in steps) / sum(s for s, _ in steps)
            rates[name].append(rate)
            print(f"round {r + 1} {name}: {rate:.2f} docs/s ({len(steps)} steps timed)", file=sys.stderr, flush=True)
    import torch

    print(f"\nmodel {Path(args.model).name}, batch {args.batch_size} queries x group {args.group_size} documents, "
          f"max length {args.max_length}, torch threads {args.threads or torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, {args.steps - args.skip} steps timed per run\n")
    print("| trainer | docs/s per round | best docs/s |")
    print("|---|---|---|")
    for name, rs in rates.items():
        print(f"| {name} | {', '.join(f'{x:.2f}' for x in rs)} | {max(rs):.2f} |")
    if len(rates) == 2:
        a, b = (max(v) for v in rates.values())
        print(f"\nlsr / sentence-transformers: {a / b:.2f}x (best of {args.rounds} rounds each)")


if __name__ == "__main__":
    main()
