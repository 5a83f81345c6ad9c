#!/usr/bin/env python
"""Side-by-side sparse retrieval benchmark: lsr's InvertedIndex (exact and approximate) beside
scipy, pyserini impact search, Seismic, BMP and PISA, single-threaded top-k, in one run.

Data comes from ``../shared/bench/peers_bench.py`` (``make_data`` with the idf weight model,
cached as .npz under ``--cache``); recall@k is measured against the exact top-k of the FLOAT
scores (``peers_bench.exact_topk``). Peers run in a subprocess of ``--peers-python`` (their own
virtual environment) on the same .npz files, through peers_bench's ``run_*`` functions; a peer
that is not installed there is skipped with a note. Timings are best of ``--repeat`` runs for
lsr (peers: peers_bench's own single timed loop after a warm-up).

    python scripts/bench_sparse.py --sizes 100000 --peers-python /work/cache/peers-venv/bin/python
    python scripts/bench_sparse.py --sizes 100000,1000000 --markdown docs/bench_sparse.md
    python scripts/bench_sparse.py --peer-worker seismic --data D.npz --queries Q.npz ...  # internal
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH_DIR = Path(os.environ.get("LSR_PEERS_BENCH", HERE.parent.parent / "shared" / "bench"))
sys.path.insert(0, str(BENCH_DIR))
import peers_bench as pb  # noqa: E402  (sets *_NUM_THREADS=1: single-threaded search)

# (row name, index, search keywords): "compact" is the default index (block-compressed postings
# only); "forward" adds the doc-major copy with 16-bit codes that approximate mode re-scores with
LSR_SETTINGS = [
    ("lsr exhaustive TAAT (8-bit, exact)", "compact", dict(mode="exhaustive")),
    ("lsr exact (8-bit; MaxScore, or a scan below 32768 docs)", "compact", dict(mode="exact")),
    ("lsr approx, compact index (8-bit re-scoring) query_cut=12 n_postings=1000 candidates=50 heap_factor=0.8",
     "compact", dict(mode="approximate", query_cut=12, n_postings=1000, candidates=50, heap_factor=0.8)),
    ("lsr approx query_cut=30 n_postings=1000 candidates=60", "forward",
     dict(mode="approximate", query_cut=30, n_postings=1000, candidates=60)),
    ("lsr approx query_cut=12 n_postings=1000 candidates=50 heap_factor=0.8", "forward",
     dict(mode="approximate", query_cut=12, n_postings=1000, candidates=50, heap_factor=0.8)),
    ("lsr approx query_cut=10 n_postings=1000 candidates=40 heap_factor=0.8", "forward",
     dict(mode="approximate", query_cut=10, n_postings=1000, candidates=40, heap_factor=0.8)),
    ("lsr approx query_cut=8 n_postings=1000 candidates=30 heap_factor=0.8", "forward",
     dict(mode="approximate", query_cut=8, n_postings=1000, candidates=30, heap_factor=0.8)),
    ("lsr approx query_cut=10 n_postings=2000 candidates=40 heap_factor=0.8", "forward",
     dict(mode="approximate", query_cut=10, n_postings=2000, candidates=40, heap_factor=0.8)),
]


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def synthetic(ndocs: int, nq: int, cache: Path):
    """(D, Q) from peers_bench.make_data(weight_model='idf'), cached as .npz."""
    import scipy.sparse as sp

    fd, fq = cache / f"bench_D{ndocs // 1000}k.npz", cache / f"bench_Q{ndocs // 1000}k.npz"
    if fd.exists() and fq.exists():
        return sp.load_npz(fd).tocsr(), sp.load_npz(fq).tocsr()
    D, Q = pb.make_data(ndocs, nq, weight_model="idf")
    sp.save_npz(fd, D, compressed=False)
    sp.save_npz(fq, Q, compressed=False)
    return D, Q


def real_data(name: str, cache: Path, data_root: Path, model: Path):
    """(D, Q) for a BEIR dataset: splade-tiny document vectors from the ``lsr encode`` shards under
    ``cache/splade/<name>/``, test queries encoded with :class:`lsr.SpladeEncoder` (query max length 64)
    and cached as ``cache/sparse_real/<name>_queries.npz``."""
    import scipy.sparse as sp

    from lsr.io.shards import load_shards

    shard_dirs = sorted((cache / "splade" / name).glob("*/progress.json"))
    if not shard_dirs:
        raise SystemExit(f"no document shards under {cache / 'splade' / name}: run `lsr encode` first")
    _, docs = load_shards(shard_dirs[0].parent)
    D = docs.to_scipy().tocsr()
    fq = cache / "sparse_real" / f"{name}_queries.npz"
    if not fq.exists():
        from lsr import SpladeEncoder
        from lsr.io.readers import load_beir

        ds = load_beir(data_root / name, "test")
        enc = SpladeEncoder(model, query_max_length=64)
        Q = enc.encode_queries(list(ds.queries.values())).to_scipy().tocsr()
        fq.parent.mkdir(parents=True, exist_ok=True)
        sp.save_npz(fq, Q, compressed=False)
    Q = sp.load_npz(fq).tocsr()
    D.sort_indices()
    Q.sort_indices()
    return D.astype(np.float32), Q.astype(np.float32)


def truth_for(D, Q, k: int, cache: Path, tag: str) -> np.ndarray:
    f = cache / (f"bench_T{tag}.npy" if k == 10 else f"bench_T{tag}_k{k}.npy")
    if f.exists():
        return np.load(f)
    t = pb.exact_topk(D, Q, k)
    np.save(f, t)
    return t


def build_lsr(D, kind: str, workdir: Path) -> tuple[Any, dict]:
    """Build one lsr index ("compact" or "forward"), save it, reopen it memory-mapped; its figures."""
    from lsr import InvertedIndex

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    index = InvertedIndex.from_csr(D, quantize=8, forward=kind == "forward")
    build = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = workdir / f"lsr_index_{kind}"
    index.save(path)
    del index
    files = {f.name: f.stat().st_size for f in path.iterdir()}
    size = sum(files.values())
    search_size = size - files.get("doc_ids.parquet", 0) - files.get("manifest.json", 0)
    info = {"build_s": build, "size_bytes": size, "bytes_per_posting": search_size / D.nnz}
    info["note"] = (f"{kind} index: build {build:.1f}s (1 thread, in memory); peak RSS growth "
                    f"{max(0, rss1 - rss0) / 1024:.0f} MiB; {size / 2**20:.1f} MiB = {search_size / D.nnz:.2f} "
                    f"B/posting without ids")
    index = InvertedIndex.load(path)
    p = index.postings
    derived = p.raw_docs.nbytes + p.raw_imps.nbytes + sum(a.nbytes for a in index._bm)
    derived += sum(a.nbytes for a in index._mem_forward) if index._mem_forward is not None else 0
    info["note"] += (f"; loaded (decoded mode) it also holds {derived / D.nnz:.2f} B/posting of decoded lists and "
                     f"derived tables in RAM")
    return index, info


def run_lsr(D, Q, truth, k: int, repeat: int, workdir: Path, settings=LSR_SETTINGS) -> list[dict]:
    rows = []
    for kind in dict.fromkeys(kind for _, kind, _ in settings):
        index, info = build_lsr(D, kind, workdir)
        prune_s = {}
        for n_post in sorted({kw["n_postings"] for _, kd, kw in settings if kd == kind and kw.get("n_postings")}):
            t = time.perf_counter()
            index.pruned(n_post)  # static pruning: derived at first use, timed separately
            prune_s[n_post] = time.perf_counter() - t
        if prune_s:
            info["note"] += "; static pruning " + ", ".join(f"n_postings={n}: {v:.1f}s" for n, v in prune_s.items())
        first = len(rows)
        for name, kd, kw in settings:
            if kd != kind:
                continue
            index.search(Q[:20], k=k, **kw)  # warm-up (JIT)
            best, ids = 1e9, None
            for _ in range(repeat):
                t = time.perf_counter()
                ids, _ = index.search(Q, k=k, **kw)
                best = min(best, time.perf_counter() - t)
            rows.append({"system": name, "qps": Q.shape[0] / best, "recall": pb.recall(ids, truth, k),
                         "build_s": info["build_s"], "size_bytes": info["size_bytes"],
                         "bytes_per_posting": info["bytes_per_posting"]})
        rows[first]["note"] = info["note"]
        del index
    return rows


def run_peers(peers_python: str, peers: list[str], dfile: Path, qfile: Path, tfile: Path, k: int,
              workdir: Path) -> list[dict]:
    rows = []
    for name in peers:
        out = workdir / f"peer_{name}.json"
        cmd = [peers_python, str(Path(__file__).resolve()), "--peer-worker", name, "--data", str(dfile),
               "--queries", str(qfile), "--truth", str(tfile), "--k", str(k), "--workdir", str(workdir),
               "--json-out", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"  {name}: skipped ({' | '.join(tail)})", file=sys.stderr)
            rows.append({"system": f"{name} (skipped: {tail[-1] if tail else 'failed'})", "qps": float("nan"),
                         "recall": float("nan")})
            continue
        res = json.loads(out.read_text())
        print(f"  {name}: {time.perf_counter() - t:.0f}s", file=sys.stderr)
        rows.extend(res)
    return rows


def peer_worker(args) -> None:
    """Runs inside the peers' virtual environment: one peer over the given .npz data."""
    import scipy.sparse as sp

    D, Q = sp.load_npz(args.data).tocsr(), sp.load_npz(args.queries).tocsr()
    truth = np.load(args.truth)
    Dq, Qq = pb.quantise(D, Q)
    ns = argparse.Namespace(workdir=str(Path(args.workdir) / "peers"), build_threads=1, bmp_bsize=32,
                            seismic_postings=[int(x) for x in args.seismic_postings.split(",")])
    os.makedirs(ns.workdir, exist_ok=True)
    out, build = [], {}
    t = time.perf_counter()
    if args.peer_worker == "scipy":
        pb.run_scipy(D, Q, args.k, ns, out)
    elif args.peer_worker == "pyserini":
        pb.run_pyserini(Dq, Qq, args.k, ns, out, build)
    elif args.peer_worker == "bmp":
        pb.run_bmp(Dq, Q, args.k, ns, out, build)
    elif args.peer_worker == "seismic":
        seismic_sizes = _measure_seismic_size(Path(ns.workdir))
        pb.run_seismic(D, Q, args.k, ns, out, build)
    elif args.peer_worker == "pisa":
        pb.run_pisa(Dq, Qq, args.k, ns, out, build)
    else:
        raise SystemExit(f"unknown peer {args.peer_worker}")
    size = None
    if args.peer_worker == "pyserini":
        size = dir_size(Path(ns.workdir) / "pyserini_idx")
    elif args.peer_worker == "pisa":
        size = dir_size(Path(ns.workdir) / "pisa_idx")
    elif args.peer_worker == "bmp":
        size = os.path.getsize(Path(ns.workdir) / "bmp.index")
    elif args.peer_worker == "seismic" and seismic_sizes:
        size = seismic_sizes[-1]
    rows = []
    for name, qps, res in out:
        rows.append({"system": name, "qps": qps, "recall": pb.recall(res, truth, args.k) if res else float("nan"),
                     "size_bytes": size, "bytes_per_posting": size / D.nnz if size else None,
                     "note": json.dumps(build) if build else ""})
    for key, val in build.items():  # build times as parsed seconds where the string starts with them
        for r in rows:
            r.setdefault("build", {})[key] = val
    Path(args.json_out).write_text(json.dumps(rows))
    print(f"{args.peer_worker} done in {time.perf_counter() - t:.0f}s", file=sys.stderr)


def _measure_seismic_size(workdir: Path) -> list[int]:
    """Make peers_bench's Seismic builds also save the index (SeismicIndex.save) and record the
    file size; returns the list the sizes are appended to."""
    import seismic

    sizes: list[int] = []
    original = seismic.SeismicIndex

    class Measured:
        @staticmethod
        def build_from_dataset(*a, **kw):
            index = original.build_from_dataset(*a, **kw)
            target = workdir / "seismic.index"
            index.save(str(target))
            found = [p for p in workdir.iterdir() if p.name.startswith("seismic.index")]
            sizes.append(sum(p.stat().st_size for p in found))
            for p in found:
                p.unlink()
            return index

    seismic.SeismicIndex = Measured
    return sizes


def table(title: str, rows: list[dict], k: int) -> str:
    lines = [f"### {title}", "", f"| system (1 thread, top-{k}) | QPS | R@{k} | index MiB | B/posting | build |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        size = r.get("size_bytes")
        bpp = r.get("bytes_per_posting")
        build = r.get("build_s")
        b = f"{build:.1f}s" if isinstance(build, float) else "; ".join(f"{k2}: {v}" for k2, v in
                                                                       (r.get("build") or {}).items())
        lines.append(f"| {r['system']} | {r['qps']:.0f} | {r['recall']:.4f} | "
                     f"{size / 2**20:.1f} | {bpp:.2f} | {b} |" if size else
                     f"| {r['system']} | {r['qps']:.0f} | {r['recall']:.4f} | | | {b} |")
    notes = [r["note"] for r in rows if r.get("note")]
    lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000", help="comma-separated synthetic corpus sizes")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="best-of-N timing for lsr")
    ap.add_argument("--peers", default="scipy,pyserini,seismic,bmp,pisa")
    ap.add_argument("--peers-python", default="/work/cache/peers-venv/bin/python")
    ap.add_argument("--seismic-postings", default="3500")
    ap.add_argument("--cache", default="/work/cache")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--real", default="", help="BEIR datasets with splade-tiny vectors, e.g. scifact,nfcorpus")
    ap.add_argument("--real-peers", default="scipy,seismic,pyserini", help="peers for the --real datasets")
    ap.add_argument("--beir", default=str(HERE.parent.parent / "shared" / "data" / "beir"))
    ap.add_argument("--model", default=str(HERE.parent.parent / "shared" / "models" / "splade-tiny"))
    ap.add_argument("--markdown", default=None, help="write the tables to this file")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--queries", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        peer_worker(args)
        return
    cache = Path(args.cache)
    workroot = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sparse-"))
    peers = [p for p in args.peers.split(",") if p]
    if peers and not Path(args.peers_python).exists():
        print(f"note: {args.peers_python} not found: peers skipped", file=sys.stderr)
        peers = []
    sections = []
    for ndocs in [int(x) for x in args.sizes.split(",") if x]:
        tag = f"{ndocs // 1000}k"
        D, Q = synthetic(ndocs, args.nq, cache)
        truth = truth_for(D, Q, args.k, cache, tag)
        workdir = workroot / tag
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"== {tag}: {D.shape[0]} docs ({D.nnz / D.shape[0]:.1f} nnz), {Q.shape[0]} queries", file=sys.stderr)
        rows = run_lsr(D, Q, truth, args.k, args.repeat, workdir)
        for kind in ("compact", "forward"):
            shutil.rmtree(workdir / f"lsr_index_{kind}", ignore_errors=True)
        tfile = workdir / "truth.npy"
        np.save(tfile, truth)
        rows += run_peers(args.peers_python, peers, cache / f"bench_D{tag}.npz", cache / f"bench_Q{tag}.npz",
                          tfile, args.k, workdir)
        title = f"synthetic idf, {ndocs} docs, {Q.shape[0]} queries"
        sections.append(table(title, rows, args.k))
        print(sections[-1], flush=True)
        del D, Q
    for name in [x for x in args.real.split(",") if x]:
        D, Q = real_data(name, cache, Path(args.beir), Path(args.model))
        workdir = workroot / name
        workdir.mkdir(parents=True, exist_ok=True)
        truth = pb.exact_topk(D, Q, args.k)
        print(f"== {name}: {D.shape[0]} docs ({D.nnz / D.shape[0]:.1f} nnz), {Q.shape[0]} queries "
              f"({Q.nnz / Q.shape[0]:.1f} nnz)", file=sys.stderr)
        rows = run_lsr(D, Q, truth, args.k, args.repeat, workdir)
        for kind in ("compact", "forward"):
            shutil.rmtree(workdir / f"lsr_index_{kind}", ignore_errors=True)
        import scipy.sparse as sp

        dfile, qfile, tfile = workdir / "D.npz", workdir / "Q.npz", workdir / "truth.npy"
        sp.save_npz(dfile, D, compressed=False)
        sp.save_npz(qfile, Q, compressed=False)
        np.save(tfile, truth)
        rows += run_peers(args.peers_python, [p for p in args.real_peers.split(",") if p in peers], dfile, qfile, tfile, args.k, workdir)
        title = (f"{name}, splade-tiny vectors: {D.shape[0]} docs ({D.nnz / D.shape[0]:.0f} terms each), "
                 f"{Q.shape[0]} test queries ({Q.nnz / Q.shape[0]:.0f} terms each)")
        sections.append(table(title, rows, args.k))
        print(sections[-1], flush=True)
    header = (f"Machine: {os.cpu_count()} cores (shared), Python {sys.version.split()[0]}; command: "
              f"`python scripts/bench_sparse.py {' '.join(sys.argv[1:])}`")
    text = "\n\n".join([header] + sections) + "\n"
    if args.markdown:
        Path(args.markdown).write_text(text)
    shutil.rmtree(workroot, ignore_errors=True)


if __name__ == "__main__":
    main()
