#!/usr/bin/env python
"""Document encoding throughput: lsr's SpladeEncoder vs sentence-transformers' SparseEncoder.

Same model directory, same documents (the first ``--docs`` of a BEIR corpus, title + text), same
maximum length, batch size and torch threads. Implementations run interleaved for ``--rounds``
rounds and the best round counts, so a noisy shared machine penalises all of them alike. The
vectors are checked against each other before the table is printed.

    python scripts/bench_encode.py --dataset ../shared/data/beir/scifact \\
        --model ../shared/models/splade-tiny --docs 256 --threads 2 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np


def load_docs(dataset: Path, n: int) -> list[str]:
    docs = []
    with open(dataset / "corpus.jsonl") as f:
        for line in f:
            o = json.loads(line)
            docs.append(f"{o.get('title', '')} {o.get('text', '')}".strip())
            if len(docs) >= n:
                break
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("../shared/data/beir/scifact"))
    ap.add_argument("--model", default="../shared/models/splade-tiny")
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="also time a plain transformers implementation")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from lsr.encoders.splade import SpladeEncoder

    torch.set_num_threads(args.threads)
    docs = load_docs(args.dataset, args.docs)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    impls = {}
    for dev in devices:
        lsr_enc = SpladeEncoder(args.model, doc_max_length=args.max_length, batch_size=args.batch_size,
                                device=dev, threads=args.threads if dev == "cpu" else None)
        lsr_enc.load_model()
        impls[f"lsr SpladeEncoder ({dev})"] = (dev, lambda e=lsr_enc: e.encode_documents(docs).to_scipy().toarray())
        mlm = MLMTransformer(str(args.model), max_seq_length=args.max_length)
        st = SparseEncoder(modules=[mlm, SpladePooling("max", activation_function="relu")], device=dev)
        impls[f"sentence-transformers SparseEncoder ({dev})"] = (
            dev, lambda m=st: m.encode_document(docs, batch_size=args.batch_size, convert_to_tensor=True)
            .to_dense().float().cpu().numpy())
    if args.plain:
        tok = AutoTokenizer.from_pretrained(str(args.model))
        model = AutoModelForMaskedLM.from_pretrained(str(args.model), dtype=torch.float32).eval()

        def plain() -> np.ndarray:
            out = []
            with torch.inference_mode():
                for s in range(0, len(docs), args.batch_size):
                    e = tok(docs[s:s + args.batch_size], padding=True, truncation=True, max_length=args.max_length,
                            return_tensors="pt")
                    w = (torch.log1p(torch.relu(model(**e).logits)) * e["attention_mask"].unsqueeze(-1)).amax(1)
                    out.append(w.numpy())
            return np.concatenate(out)

        impls["plain transformers (cpu)"] = ("cpu", plain)

    special = SpladeEncoder(args.model).special_ids
    best = {name: float("inf") for name in impls}
    outputs = {}
    for name, (dev, fn) in impls.items():  # warm-up (also the correctness check)
        outputs[name] = fn()
    for _ in range(args.rounds):
        for name, (dev, fn) in impls.items():
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t)
    ref = outputs["sentence-transformers SparseEncoder (cpu)"].copy()
    ref[:, special] = 0
    for name, out in outputs.items():
        out = out.copy()
        out[:, special] = 0
        print(f"# max |w - sentence-transformers cpu| for {name}: {np.abs(out - ref).max():.2e}")
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"# {len(docs)} docs of {args.dataset.name}, max length {args.max_length}, batch {args.batch_size}, "
          f"torch threads {args.threads}, best of {args.rounds} interleaved rounds; CPU{cpu.stdout.strip() or '?'}, "
          f"GPU {gpu}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"{'implementation':<45} {'docs/s':>9} {'vs ST':>7}")
    for name in impls:
        dev = impls[name][0]
        st_name = f"sentence-transformers SparseEncoder ({dev})"
        ratio = best[st_name] / best[name]
        print(f"{name:<45} {len(docs) / best[name]:>9.1f} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
