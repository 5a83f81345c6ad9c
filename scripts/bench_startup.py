#!/usr/bin/env python
"""Start-up cost of the CLI: ``import lsr``, the first ``lsr search`` after a fresh install, a
warm ``lsr search``, and bm25s doing the same job, each as a fresh process (as a user runs them).

The job: a BM25 index of the first ``--docs`` documents of a BEIR corpus, then one query, top 10.
"Fresh install" means an empty Numba cache: every command runs with ``NUMBA_CACHE_DIR`` pointing
at a directory of this run (so the in-tree ``lsr/**/__pycache__/*.nbi`` files of an editable
install are never read), and the first search gets one that nothing has written to. Two first
searches are timed: one in a cache that ``lsr index`` has not touched either (an index copied
from elsewhere), and one right after ``lsr index`` in the same cache (install, index, search).

    python scripts/bench_startup.py                      # scifact, 300 documents, 5 repeats
    python scripts/bench_startup.py --bm25s-python "$PEERS_VENV/bin/python"

bm25s runs in ``--bm25s-python`` (default: this interpreter if it has bm25s, else
``$PEERS_VENV/bin/python``; ``pip install bm25s PyStemmer`` there): it loads its saved index
memory-mapped, tokenises the query (English stop words, Snowball stemmer) and retrieves.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchutil import REPO, machine_line  # noqa: E402

QUERY = "what causes heart disease"

BM25S_BUILD = """
import json, sys, bm25s, Stemmer
docs = [json.loads(line) for line in open(sys.argv[1])]
texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]
tokens = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
model = bm25s.BM25()
model.index(tokens, show_progress=False)
model.save(sys.argv[2], corpus=[{"id": d["_id"]} for d in docs])
"""

BM25S_SEARCH = """
import sys, bm25s, Stemmer
model = bm25s.BM25.load(sys.argv[1], load_corpus=True, mmap=True)
q = bm25s.tokenize([sys.argv[2]], stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
docs, scores = model.retrieve(q, k=10, show_progress=False)
for rank, (d, s) in enumerate(zip(docs[0], scores[0]), 1):
    print(f"q0 Q0 {d['id']} {rank} {s:.4f} bm25s")
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of one process; its stdout. Fails loudly with the command's stderr."""
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {shlex.join(cmd)}\n{p.stderr[-3000:]}")
    return wall, p.stdout


def with_cache(cache: Path) -> dict[str, str]:
    return {**os.environ, "NUMBA_CACHE_DIR": str(cache)}


def numba_files(cache: Path) -> int:
    return sum(1 for _ in cache.rglob("*.nbi")) if cache.exists() else 0


def lsr_command(python: list[str]) -> list[str]:
    """The ``lsr`` console script next to the interpreter, else its equivalent ``-c`` line."""
    script = Path(python[0]).with_name("lsr")
    if len(python) == 1 and script.is_file():
        return [str(script)]
    return [*python, "-c", "import sys; from lsr.cli import main; sys.argv[0] = 'lsr'; sys.exit(main())"]


def has_bm25s(python: str) -> bool:
    return subprocess.run([python, "-c", "import bm25s, Stemmer"], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/beir/scifact",
                    help="BEIR directory (its corpus.jsonl) or a corpus JSONL file")
    ap.add_argument("--docs", type=int, default=300, help="index the first this many documents")
    ap.add_argument("--query", default=QUERY)
    ap.add_argument("--repeats", type=int, default=5, help="warm runs (median and best reported)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter (a command line) that runs lsr; the lsr script beside it is used")
    ap.add_argument("--bm25s-python", default=None, help="interpreter with bm25s and PyStemmer")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the indexes here (default: a temp dir)")
    args = ap.parse_args()

    python = shlex.split(args.python)
    lsr = lsr_command(python)
    peer = args.bm25s_python
    if peer is None:
        venv = os.environ.get("PEERS_VENV")
        peer = sys.executable if has_bm25s(sys.executable) else (f"{venv}/bin/python" if venv else None)
    if peer is not None and not has_bm25s(peer):
        print(f"note: {peer} cannot import bm25s and Stemmer (pip install bm25s PyStemmer); skipping bm25s",
              file=sys.stderr)
        peer = None

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lsr-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus_file = args.dataset / "corpus.jsonl" if args.dataset.is_dir() else args.dataset
    corpus = work / "corpus.jsonl"
    with open(corpus_file) as src, open(corpus, "w") as dst:
        for i, line in enumerate(src):
            if i == args.docs:
                break
            dst.write(line)
    index = work / "lsr_index"
    caches = {name: work / f"numba-{name}-{time.time_ns()}" for name in ("index", "fresh")}
    rows: list[tuple[str, str]] = []

    def stat(label: str, times: list[float]) -> None:
        rows.append((label, f"{statistics.median(times):.2f} (best {min(times):.2f}, n={len(times)})"))

    stat("`import lsr` (warm .pyc)", [run([*python, "-c", "import lsr"])[0] for _ in range(args.repeats)])
    t, _ = run([*lsr, "index", str(corpus), str(index), "-r", "bm25", "--overwrite"], with_cache(caches["index"]))
    rows.append((f"`lsr index` {args.docs} docs, empty Numba cache", f"{t:.2f}"))
    search = [*lsr, "search", str(index), "--query", args.query, "-k", "10"]
    t, out = run(search, with_cache(caches["fresh"]))
    if len(out.splitlines()) != 10:
        raise SystemExit(f"expected 10 results, got:\n{out}")
    rows.append(("first `lsr search`, empty Numba cache (fresh install)", f"{t:.2f}"))
    t, _ = run(search, with_cache(caches["index"]))
    rows.append(("first `lsr search` after that `lsr index` (same cache)", f"{t:.2f}"))
    stat("warm `lsr search`", [run(search, with_cache(caches["fresh"]))[0] for _ in range(args.repeats)])
    cache_note = (f"Numba cache files written by the fresh search: {numba_files(caches['fresh'])} "
                  f"(by index + search: {numba_files(caches['index'])})")

    if peer is not None:
        peer_index = work / "bm25s_index"
        t, _ = run([peer, "-c", BM25S_BUILD, str(corpus), str(peer_index)])
        rows.append((f"bm25s index {args.docs} docs (API, fresh process)", f"{t:.2f}"))
        stat("`import bm25s`", [run([peer, "-c", "import bm25s"])[0] for _ in range(args.repeats)])
        job = [peer, "-c", BM25S_SEARCH, str(peer_index), args.query]
        run(job)  # its .pyc files
        stat("bm25s search (load mmap + 1 query, fresh process)", [run(job)[0] for _ in range(args.repeats)])

    numba_version = subprocess.run([*python, "-c", "import numba; print(numba.__version__)"], capture_output=True,
                                   text=True).stdout.strip()
    print(f"{machine_line()}, numba {numba_version}; {corpus_file}, first {args.docs} documents, "
          f"query {args.query!r}, k=10")
    print("\n| step | seconds |\n|---|---:|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    print(f"\n{cache_note}; work directory {work}")


if __name__ == "__main__":
    main()
