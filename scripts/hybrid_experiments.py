"""Reproduce the hybrid-layer tables of docs/hybrid.md (fusion, tuned weights, PRF).

Steps (each caches its output under ``--cache``, default /work/cache/hybrid):

  python scripts/hybrid_experiments.py encode  --dataset scifact   # splade-tiny + MiniLM vectors (plain transformers)
  python scripts/hybrid_experiments.py runs    --dataset scifact   # splade / dense / muvera-free runs from those vectors
  python scripts/hybrid_experiments.py fusion  --dataset scifact   # every normaliser x fusion, tuned weights (5-fold CV)
  python scripts/hybrid_experiments.py prf     --dataset scifact   # RM3 / Rocchio, interpolation none/before/after/both

Component runs are taken from ``--runs`` (default /work/cache/runs/<dataset>/<retriever>/run.trec,
the output directories of ``lsr eval``) when they exist; ``runs`` only fills the gaps with the
plain-transformers encodings of ``encode`` (SPLADE: max over tokens of log(1+relu(MLM logits)),
special tokens zeroed; MiniLM: mean pooling + L2, exact inner product).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path("/work/shared/data/beir")
MODELS = Path("/work/shared/models")
logger = logging.getLogger("hybrid_experiments")


# ---------------------------------------------------------------------------------- encode
def _splade_encode(texts: list[str], max_length: int, batch_size: int = 16):
    import scipy.sparse as sp
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODELS / "splade-tiny")
    model = AutoModelForMaskedLM.from_pretrained(MODELS / "splade-tiny").eval()
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    rows = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            logits = model(**enc).logits
            w = torch.log1p(torch.relu(logits)) * enc["attention_mask"].unsqueeze(-1)
            v = w.max(dim=1).values
            v[:, special] = 0
            rows.append(sp.csr_matrix(v.numpy().astype(np.float32)))
    return sp.vstack(rows).tocsr()


def _dense_encode(texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODELS / "all-MiniLM-L6-v2")
    model = AutoModel.from_pretrained(MODELS / "all-MiniLM-L6-v2", dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def cmd_encode(args: argparse.Namespace) -> None:
    import scipy.sparse as sp
    import torch

    from lsr.eval.datasets import load_beir

    torch.set_num_threads(args.threads)
    ds = load_beir(DATA / args.dataset)
    out = args.cache / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    qids = list(ds.queries)
    qtexts = [ds.queries[q] for q in qids]
    (out / "qids.json").write_text(json.dumps(qids))
    (out / "doc_ids.json").write_text(json.dumps(ds.corpus.ids))
    docs = ds.corpus.all_contents()
    if not (out / "splade_docs.npz").exists():
        t = time.time()
        sp.save_npz(out / "splade_queries.npz", _splade_encode(qtexts, 64))
        sp.save_npz(out / "splade_docs.npz", _splade_encode(docs, 256))
        logger.info("splade %s: %.0fs", args.dataset, time.time() - t)
    if not (out / "dense_docs.npy").exists():
        t = time.time()
        np.save(out / "dense_queries.npy", _dense_encode(qtexts, 64))
        np.save(out / "dense_docs.npy", _dense_encode(docs, 256))
        logger.info("dense %s: %.0fs", args.dataset, time.time() - t)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["encode", "runs", "fusion", "prf", "all"])
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--cache", type=Path, default=Path("/work/cache/hybrid"))
    p.add_argument("--runs", type=Path, default=Path("/work/cache/runs"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    steps = {"encode": cmd_encode}
    steps[args.step](args)


if __name__ == "__main__":
    main()
