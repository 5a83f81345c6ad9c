"""Reproduce the hybrid-layer tables of docs/hybrid.md (fusion, tuned weights, PRF).

Component runs are the output directories of ``lsr eval`` under ``--runs`` (default
/work/cache/runs/<dataset>/<retriever>/run.trec), e.g.

  lsr eval DATA/scifact -r bm25 -o RUNS/scifact/bm25
  lsr eval DATA/scifact -r splade -m MODELS/splade-tiny -o RUNS/scifact/splade
  lsr eval DATA/scifact -r dense -m MODELS/all-MiniLM-L6-v2 --embedding-cache CACHE -o RUNS/scifact/dense
  lsr eval DATA/scifact -r muvera -m MODELS/all-MiniLM-L6-v2 --embedding-cache CACHE -o RUNS/scifact/muvera

then (outputs under ``--cache``/out/<dataset>/: one eval-style directory per configuration, for
``lsr report``, plus fusion_table.md / prf_table.md):

  python scripts/hybrid_experiments.py fusion --dataset scifact [--runs RUNS]  # every normaliser x method, 5-fold CV
                                                                             # (--selection 1se|best)
  python scripts/hybrid_experiments.py tuning --dataset scifact                # CV weight selection best/1se, seeds 0-4
  python scripts/hybrid_experiments.py prf    --dataset scifact                # RM3 / Rocchio, interpolation none/before/after/both
  python scripts/hybrid_experiments.py encode --dataset scifact                # fallback: plain-transformers vectors

The PRF step builds BM25, SPLADE (``lsr encode`` shards under /work/cache/splade when present)
and dense (embedding cache /work/cache/dense) retrievers itself, since PRF needs their indexes.
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

    from lsr.io.readers import load_beir

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


# ---------------------------------------------------------------------------------- helpers
def _eval(qrels, run) -> dict[str, float]:
    from lsr.metrics import DEFAULT_METRICS, evaluate

    return evaluate(qrels, run, DEFAULT_METRICS)


def _cut(run, depth: int = 1000):
    from lsr.metrics import remove_self_hits
    from lsr.io.runs import ranked

    return {q: dict(ranked(d)[:depth]) for q, d in remove_self_hits(run).items()}


def _save(out: Path, run, metrics: dict, config: dict) -> None:
    from lsr.io.runs import write_run

    out.mkdir(parents=True, exist_ok=True)
    write_run(run, out / "run.trec", tag=out.name.replace(" ", "_")[:40] or "run")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _component_runs(args, names):
    from lsr.io.runs import read_run

    runs = {}
    for n in names:
        f = args.runs / args.dataset / n / "run.trec"
        if f.is_file():
            runs[n] = read_run(f)
        else:
            logger.warning("no %s run at %s", n, f)
    return runs


# ---------------------------------------------------------------------------------- fusion
def cmd_fusion(args: argparse.Namespace) -> None:
    """Every normaliser x method with equal weights, then 5-fold CV tuned weights, 3 and 4 signals."""
    from lsr.io.readers import load_beir
    from lsr.fusion.combine import RANK_BASED, fuse
    from lsr.fusion.tuning import cross_validate

    ds = load_beir(DATA / args.dataset)
    comps = _component_runs(args, ["bm25", "splade", "dense", "muvera", "maxsim"])
    base = [n for n in ("bm25", "splade", "dense") if n in comps]
    out = args.cache / "out" / args.dataset
    rows = []
    for n, run in comps.items():
        m = _eval(ds.qrels, run)
        rows.append((n, "-", m))
        _save(out / n, run, m, {"dataset": args.dataset, "retriever": n})
    norms = ["min-max", "zmuv", "l2", "max", "sum", "tmm", "rank", "borda"]
    methods = ["wsum", "mnz", "anz", "max", "med"]
    signals = {"3": base, "4": base + (["muvera"] if "muvera" in comps else [])}
    for tag, names in signals.items():
        if tag == "4" and len(names) == len(base):
            continue
        runs = [comps[n] for n in names]
        label = "+".join(names)
        lb = [{"lower_bound": -1.0 if n in ("dense",) else 0.0} for n in names]
        for norm in norms:
            for method in methods:
                if tag == "4" and method != "wsum":
                    continue
                fused = _cut(fuse(runs, norm=norm, method=method, depth=1000, k=1001,
                                  norm_params=lb if norm == "tmm" else None))
                m = _eval(ds.qrels, fused)
                rows.append((label, f"{norm} {method} (equal)", m))
                _save(out / f"{tag}sig-{norm}-{method}", fused, m, {"dataset": args.dataset, "runs": names,
                                                                     "norm": norm, "method": method})
        for method in sorted(RANK_BASED - {"wrrf", "w_bordafuse"}):
            fused = _cut(fuse(runs, method=method, depth=1000, k=1001))
            m = _eval(ds.qrels, fused)
            rows.append((label, f"{method} (equal)", m))
            _save(out / f"{tag}sig-{method}", fused, m, {"dataset": args.dataset, "runs": names, "method": method})
        for norm, method in [("min-max", "wsum"), ("zmuv", "wsum"), ("tmm", "wsum"), ("min-max", "wrrf")]:
            t = time.time()
            cv = cross_validate(runs, ds.qrels, folds=5, norm=norm, method=method, depth=1000, k=1001,
                                norm_params=lb if norm == "tmm" else None, step=0.1 if len(runs) <= 3 else 0.125,
                                selection=args.selection)
            fused = _cut(cv.run)
            m = _eval(ds.qrels, fused)
            rows.append((label, f"{norm} {method} (5-fold CV)", m))
            _save(out / f"{tag}sig-{norm}-{method}-cv5", fused, m,
                  {"dataset": args.dataset, "runs": names, "norm": norm, "method": method,
                   "selection": args.selection, "fold_weights": cv.fold_weights,
                   "heldout_scores": cv.heldout_scores})
            logger.info("%s %s %s CV in %.0fs: fold weights %s", label, norm, method, time.time() - t, cv.fold_weights)
    lines = ["| runs | fusion | nDCG@10 | recall@100 | recall@1000 |", "| --- | --- | --- | --- | --- |"]
    for label, fusion, m in rows:
        lines.append(f"| {label} | {fusion} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['recall@1000']:.4f} |")
    text = "\n".join(lines)
    (out / "fusion_table.md").write_text(text + "\n")
    print(f"## {args.dataset}\n\n{text}\n")


# ---------------------------------------------------------------------------------- tuning
def cmd_tuning(args: argparse.Namespace) -> None:
    """5-fold CV of BM25 + SPLADE + MiniLM (wsum, min-max and z-score) for fold seeds ``--seeds`` and
    both weight selections (best, 1se): held-out nDCG@10 and each fold's weights."""
    from lsr.io.readers import load_beir
    from lsr.fusion.tuning import cross_validate

    ds = load_beir(DATA / args.dataset)
    comps = _component_runs(args, ["bm25", "splade", "dense"])
    runs = [comps[n] for n in ("bm25", "splade", "dense")]
    out = args.cache / "out" / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    records, lines = [], ["| norm | selection | seed | CV nDCG@10 | fold weights (BM25, SPLADE, MiniLM) |",
                          "| --- | --- | --- | --- | --- |"]
    for norm in ("min-max", "zmuv"):
        for selection in ("best", "1se"):
            for seed in args.seeds:
                t = time.time()
                cv = cross_validate(runs, ds.qrels, folds=5, norm=norm, method="wsum", depth=1000, k=1000,
                                    seed=seed, selection=selection)
                records.append({"dataset": args.dataset, "norm": norm, "method": "wsum", "selection": selection,
                                "seed": seed, "cv_score": cv.score, "fold_weights": cv.fold_weights,
                                "heldout_scores": cv.heldout_scores, "train_scores": cv.train_scores,
                                "fold_best_weights": [r.best_weights for r in cv.fold_tuning],
                                "fold_se": [r.se for r in cv.fold_tuning],
                                "fold_candidates": [r.candidates for r in cv.fold_tuning]})
                weights = " ".join(str(w).replace(" ", "") for w in cv.fold_weights)
                lines.append(f"| {norm} | {selection} | {seed} | {cv.score:.4f} | {weights} |")
                logger.info("%s %s seed %d: %.4f in %.0fs", norm, selection, seed, cv.score, time.time() - t)
    text = "\n".join(lines)
    (out / "tuning_table.md").write_text(text + "\n")
    (out / "tuning.json").write_text(json.dumps(records, indent=2) + "\n")
    print(f"## tuning {args.dataset}\n\n{text}\n")


# ---------------------------------------------------------------------------------- PRF
def _retrievers(args, ds):
    """BM25, SPLADE (shards of `lsr encode` when present) and dense (embedding cache) retrievers."""
    from lsr.retrievers.base import retriever_class
    from lsr.retrievers.sparse import BM25Retriever

    ids, texts = ds.corpus.ids, ds.corpus.all_contents()
    out = {}
    bm25 = BM25Retriever()
    bm25.index(ids, texts)
    out["bm25"] = bm25
    shards = Path(f"/work/cache/splade/{args.dataset}/splade-tiny-256")
    try:
        sp = retriever_class("splade").from_options(model=str(MODELS / "splade-tiny"),
                                                    doc_vectors=str(shards) if shards.is_dir() else None)
        sp.index(ids, texts, show_progress=True)
        out["splade"] = sp
    except Exception as exc:  # noqa: BLE001 - report and go on without it
        logger.warning("no SPLADE retriever: %s", exc)
    try:
        from lsr.encoders.embedding import DenseEncoder

        enc = DenseEncoder(str(MODELS / "all-MiniLM-L6-v2"), doc_max_length=256, query_max_length=64,
                           cache_dir="/work/cache/dense")
        de = retriever_class("dense")(enc)
        de.index(ids, texts, show_progress=True)
        out["dense"] = de
    except Exception as exc:  # noqa: BLE001
        logger.warning("no dense retriever: %s", exc)
    return out


def cmd_prf(args: argparse.Namespace) -> None:
    """nDCG@10 / recall@1000 without PRF and with PRF interpolated before / after / both."""
    from lsr.io.readers import load_beir
    from lsr.retrievers.hybrid import HybridRetriever

    ds = load_beir(DATA / args.dataset)
    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    rets = _retrievers(args, ds)
    out = args.cache / "out" / args.dataset
    rows = []

    def run_of(res):
        return _cut(res.to_run(qids))

    for names in (["bm25", "dense"], [n for n in ("bm25", "splade", "dense") if n in rets]):
        names = [n for n in names if n in rets]
        label = "+".join(names)
        prf_params = {"fb_docs": 10, "sparse": {"fb_docs": 10, "fb_terms": 10, "alpha": 0.5},
                      "dense": {"fb_docs": 3, "alpha": 1.0, "beta": 1.0}}
        for mode in ("none", "after", "before", "both"):
            h = HybridRetriever([rets[n] for n in names], norm="min-max", fusion="wsum", depth=1000, prf=mode,
                                prf_params=prf_params)
            t = time.time()
            if mode in ("none", "both", "after"):
                res = h.search(texts, k=1001)
                fused = run_of(res)
                m = _eval(ds.qrels, fused)
                rows.append((label, f"hybrid, PRF {mode}", m))
                _save(out / f"prf-{label}-{mode}", fused, m, {"dataset": args.dataset, **h.config()})
            if mode in ("after", "before"):
                # the per-component PRF runs (own feedback for "after", hybrid feedback for "before")
                from lsr.retrievers.prf import prf_for

                fused0 = None
                if mode == "before":
                    base = HybridRetriever([rets[n] for n in names], norm="min-max", fusion="wsum", depth=1000)
                    fused0 = base.search(texts, k=10)
                for n in names:
                    p = prf_for(rets[n], prf_params["sparse"], prf_params["dense"])
                    fb = None if fused0 is None else [[d for d, _ in fused0.hits(i)] for i in range(len(qids))]
                    fbs = None if fused0 is None else fused0.scores
                    res = p.search(texts, k=1001, feedback=fb, feedback_scores=fbs)
                    r = run_of(res)
                    m = _eval(ds.qrels, r)
                    rows.append((n, f"PRF ({'hybrid feedback' if fb else 'own feedback'}; {label})", m))
            logger.info("%s PRF %s: %.0fs", label, mode, time.time() - t)
    for n in rets:
        res = rets[n].search(texts, k=1001)
        rows.append((n, "no PRF", _eval(ds.qrels, run_of(res))))
    lines = ["| run | setting | nDCG@10 | recall@1000 |", "| --- | --- | --- | --- |"]
    for label, setting, m in rows:
        lines.append(f"| {label} | {setting} | {m['ndcg@10']:.4f} | {m['recall@1000']:.4f} |")
    text = "\n".join(lines)
    (out / "prf_table.md").write_text(text + "\n")
    print(f"## PRF {args.dataset}\n\n{text}\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["encode", "fusion", "tuning", "prf", "all"])
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--cache", type=Path, default=Path("/work/cache/hybrid"))
    p.add_argument("--runs", type=Path, default=Path("/work/cache/runs"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="tuning: fold seeds")
    p.add_argument("--selection", choices=["1se", "best"], default="1se", help="fusion: CV weight selection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    steps = {"encode": cmd_encode, "fusion": cmd_fusion, "tuning": cmd_tuning, "prf": cmd_prf}
    if args.step == "all":
        for step in ("fusion", "prf"):
            steps[step](args)
    else:
        steps[args.step](args)


if __name__ == "__main__":
    main()
