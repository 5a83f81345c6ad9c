#!/usr/bin/env python
"""Live-collection benchmark (issue 12): incremental adds vs a rebuild, search over many segments
vs merged, pre-filtered exact search vs unfiltered and vs post-filtering, memory and disk.

Two collections of ``--docs`` documents (+10% for the add), one run, one markdown table each:

* **BM25** through :class:`lsr.Collection`: synthetic text, words drawn from a Zipfian vocabulary
  (seeded), log-normal lengths, metadata ``{"bucket": 0..999}`` for the filters.
* **SPLADE engine** segments written by the engine's own segment writer
  (``SpladeEngine.write_segment``: ``InvertedIndex`` float32 files), from synthetic sparse vectors
  of an encoder stub (encoding 100k documents with splade-tiny on 2 cores takes over an hour):
  30,522-term vocabulary, Zipfian term draws, ~``--doc-nnz`` (250) terms per document and ~50 per
  query, log-normal weights scaled by an idf-like factor (rare terms weigh more), as SPLADE's are
  (splade-tiny on 64 scifact documents and queries: 247 and 49 terms, log-weight sd 1.2).

Timings are the best of ``--repeat`` runs of one batch search over ``--queries`` queries (k=10,
one thread) and, for the segment rows, the same queries one call each. Memory is the RSS growth
of a fresh process after opening (then after searching), disk the bytes on disk per document.

    python scripts/bench_collection.py                       # --docs 100000 --queries 1000
    python scripts/bench_collection.py --quick               # a smoke test (seconds)
    python scripts/bench_collection.py --markdown out/bench_collection.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _benchutil import machine_line  # noqa: E402

SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
BUCKETS = 1000
SPLADE_VOCAB = 30522
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


# ---------------------------------------------------------------------------- data
def zipf_cdf(n: int, s: float = 1.0, r0: float = 2.0) -> np.ndarray:
    p = 1.0 / (np.arange(n, dtype=np.float64) + r0) ** s
    return np.cumsum(p / p.sum())


def make_texts(n_docs: int, n_queries: int, seed: int, vocab: int = 200_000) -> tuple[list[str], list[str]]:
    """Documents (log-normal lengths, median 80 words) and 2-6 word queries, words Zipfian."""
    rng = np.random.default_rng(seed)
    words = np.array(["".join(SYLLABLES[(i // 70 ** j) % 70] for j in range(3)) for i in range(vocab)], object)
    words = words[rng.permutation(vocab)]  # rank -> word
    cdf = zipf_cdf(vocab)
    lengths = np.clip(rng.lognormal(np.log(80), 0.6, n_docs), 5, 1000).astype(np.int64)
    draws = words[np.searchsorted(cdf, rng.random(int(lengths.sum())))]
    ends = np.cumsum(lengths)
    texts = [" ".join(draws[e - n:e]) for e, n in zip(ends.tolist(), lengths.tolist())]
    qlen = rng.integers(2, 7, n_queries)
    qdraws = words[np.searchsorted(cdf, rng.random(int(qlen.sum())))]
    qends = np.cumsum(qlen)
    queries = [" ".join(qdraws[e - n:e]) for e, n in zip(qends.tolist(), qlen.tolist())]
    return texts, queries


def sparse_vectors(n: int, mean_nnz: int, seed: int, scale: float = 1.0) -> Any:
    """A SPLADE-like batch: Zipfian terms, log-normal weights times an idf-like factor."""
    from lsr.types import SparseBatch

    rng = np.random.default_rng(seed)
    cdf = zipf_cdf(SPLADE_VOCAB, 1.0, 10.0)
    perm = np.random.default_rng(12345).permutation(SPLADE_VOCAB)  # the same rank -> term in docs and queries
    p = np.diff(np.concatenate([[0.0], cdf]))
    idf = np.log(1.0 / (1.0 - (1.0 - p) ** 250 + 1e-9))  # expected df share of a term in ~250-term documents
    want = np.clip(rng.normal(mean_nnz, mean_nnz / 4, n), 5, 4 * mean_nnz).astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), (want * 1.15).astype(np.int64) + 1)
    ranks = np.searchsorted(cdf, rng.random(rows.size))
    key = np.unique(rows * SPLADE_VOCAB + ranks)
    r, rank = key // SPLADE_VOCAB, key % SPLADE_VOCAB
    w = rng.lognormal(-0.9, 1.0, r.size) * scale * (idf[rank] / idf.mean())
    terms = perm[rank]
    order = np.lexsort((terms, r))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    return SparseBatch(indptr, terms[order], np.maximum(w[order], 1e-3).astype(np.float32), SPLADE_VOCAB)


class StubEncoder:
    """Stands in for the SPLADE encoder: text ``"d<i>"`` is row i of the documents, ``"q<i>"`` of the queries."""

    vocab_size = SPLADE_VOCAB
    vocab = None

    def __init__(self, docs: Any, queries: Any) -> None:
        self.docs, self.queries = docs, queries

    @staticmethod
    def _rows(batch: Any, rows: list[int]) -> Any:
        from lsr.types import SparseBatch

        rows_a = np.asarray(rows, np.int64)
        starts, ends = batch.indptr[rows_a], batch.indptr[rows_a + 1]
        indptr = np.zeros(rows_a.size + 1, np.int64)
        np.cumsum(ends - starts, out=indptr[1:])
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if rows else np.zeros(0, np.int64)
        return SparseBatch(indptr, batch.indices[take], batch.data[take], SPLADE_VOCAB)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> Any:
        return self._rows(self.docs, [int(t[1:]) for t in texts])

    def encode_queries(self, texts: list[str]) -> Any:
        return self._rows(self.queries, [int(t[1:]) for t in texts])

    def config(self) -> dict[str, Any]:
        return {"type": "splade-stub", "vocab_size": SPLADE_VOCAB}


def stub_engine(encoder: StubEncoder) -> Any:
    from lsr.collection.engines.base import Engine
    from lsr.collection.engines.sparse import SpladeEngine
    from lsr.retrievers.options import SpladeOptions

    class StubSpladeEngine(SpladeEngine):
        def __init__(self) -> None:
            Engine.__init__(self, SpladeOptions(model="splade-stub"))
            self.encoder = encoder

    return StubSpladeEngine()


# ---------------------------------------------------------------------------- measuring
def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out, best = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def dir_size(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(path).rglob(pattern) if f.is_file())


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_worker(kind: str, path: str, queries_json: str) -> None:
    """(in a fresh process) RSS growth after opening the collection/segments, then after searching."""
    queries = json.loads(queries_json)
    import lsr  # noqa: F401  (the library's own import is not part of the collection's footprint)

    if kind == "bm25":
        from lsr.collection import Collection

        base = rss_kib()
        col = Collection.open(path, readonly=True)
        opened = rss_kib()
        col.search(queries, k=10)
    else:
        import scipy.sparse  # noqa: F401

        from lsr.collection.engines.sparse import InvertedIndex, SparsePart

        base = rss_kib()
        parts = [SparsePart(Path(path), InvertedIndex.load(path, mmap=True, verify=False))]
        opened = rss_kib()
        from lsr.types import SparseBatch

        q = sparse_vectors(len(queries), 50, 7)
        for p in parts:
            p.index.search(SparseBatch(q.indptr, q.indices, q.data, SPLADE_VOCAB), k=10)
    print(json.dumps({"open_kib": opened - base, "search_kib": rss_kib() - base}))


def measure_rss(kind: str, path: Path, queries: list[str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, __file__, "--rss-worker", kind, str(path), json.dumps(queries[:100])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_by_one(search: Callable[[list[str]], Any], queries: list[str]) -> float:
    t0 = time.perf_counter()
    for q in queries:
        search([q])
    return time.perf_counter() - t0


def hits_count(seg: np.ndarray) -> np.ndarray:
    return (np.asarray(seg) >= 0).sum(axis=1)


# ---------------------------------------------------------------------------- the two collections
def bm25_rows(args: argparse.Namespace, root: Path, n: int, n_add: int) -> tuple[list[list[str]], dict]:
    from lsr.collection import Collection

    texts, queries = make_texts(n + n_add, args.queries, args.seed)
    buckets = np.random.default_rng(args.seed + 1).integers(0, BUCKETS, n + n_add)
    docs = [{"_id": f"d{i}", "text": t, "metadata": {"bucket": int(b)}} for i, (t, b) in enumerate(zip(texts, buckets))]
    rows: list[list[str]] = []
    info: dict[str, Any] = {}
    with Collection.create(root / "warm", "bm25") as col:  # imports and kernel compiles, not timed
        col.add(docs[:20])
        col.search(queries[:2], k=args.k, filter={"bucket": {"$lt": 10}})
    t0 = time.perf_counter()
    with Collection.create(root / "rebuild", "bm25") as col:
        col.add(docs)
    t_rebuild = time.perf_counter() - t0
    with Collection.create(root / "incr", "bm25") as col:
        col.add(docs[:n])
        t0 = time.perf_counter()
        col.add(docs[n:])
        t_add = time.perf_counter() - t0
        after = len(col.snapshot.segments)
    rows.append([f"add {n_add:,} docs to {n:,} (default merge policy: {after} segments after)",
                 f"{t_add:.2f} s", f"{n_add / t_add:,.0f} docs/s"])
    rows.append([f"full rebuild of {n + n_add:,} docs (one add)", f"{t_rebuild:.2f} s",
                 f"{(n + n_add) / t_rebuild:,.0f} docs/s; add = {t_add / t_rebuild:.2f}x rebuild"])
    # many segments: one add per batch, no merges; merged = optimize() of the same collection
    states: dict[str, Any] = {}
    with Collection.open(root / "rebuild", readonly=True) as col:
        states["1 segment (one add)"] = col
        c32 = Collection.create(root / "seg32", "bm25", merge_policy=None)
        t0 = time.perf_counter()
        for a, b in zip(np.linspace(0, n + n_add, 33).astype(int)[:-1], np.linspace(0, n + n_add, 33).astype(int)[1:]):
            c32.add(docs[a:b])
        t_32 = time.perf_counter() - t0
        rows.append([f"build {n + n_add:,} docs as 32 adds (no merges)", f"{t_32:.2f} s", f"{(n + n_add) / t_32:,.0f} docs/s"])
        c32.close()
        # 8 segments: the 32 merged 4 by 4 (adjacent ranges, one commit: what the tiered policy does)
        shutil.copytree(root / "seg32", root / "seg8", ignore=shutil.ignore_patterns("write.lock"))
        c8 = Collection.open(root / "seg8", merge_policy=None)
        with c8._write:
            c8._merge([(i, i + 4) for i in range(0, 32, 4)])
        states["8 segments"] = c8
        c32 = Collection.open(root / "seg32", merge_policy=None)
        states["32 segments"] = c32
        cols = {8: c8, 32: c32}
        shutil.copytree(root / "seg32", root / "merged", ignore=shutil.ignore_patterns("write.lock"))
        merged = Collection.open(root / "merged")
        t0 = time.perf_counter()
        merged.optimize()
        t_opt = time.perf_counter() - t0
        states["merged (optimize() of the 32)"] = merged
        rows.append(["optimize(): merge the 32 segments into 1", f"{t_opt:.2f} s", "stored postings, no re-analysis"])
        qps_rows = search_rows(lambda c: (lambda qs: c.search(qs, k=args.k)), states, queries, args.repeat,
                               "merged (optimize() of the 32)")
        rows += qps_rows
        rows += filter_rows_bm25(args, merged, queries, buckets)
        for s, c in cols.items():
            c.close()
        merged.close()
    m = measure_rss("bm25", root / "merged", queries)
    seg_dir = root / "merged" / "segments"
    total = n + n_add
    rows.append(["memory: RSS growth after open (fresh process, merged)", f"{m['open_kib'] / 1024:.1f} MiB",
                 f"{m['open_kib'] * 1024 / total:.0f} B/doc; after 100 queries {m['search_kib'] / 1024:.1f} MiB "
                 f"({m['search_kib'] * 1024 / total:.0f} B/doc)"])
    engine_b = dir_size(seg_dir, "engine/*")
    docs_b = dir_size(seg_dir, "docs.parquet")
    rows.append(["disk per document (merged)", f"{dir_size(root / 'merged') / total:.0f} B",
                 f"BM25 postings {engine_b / total:.0f} B, docs.parquet {docs_b / total:.0f} B "
                 f"(text {np.mean([len(t) for t in texts[:1000]]):.0f} chars)"])
    return rows, info


def search_rows(searcher: Callable[[Any], Callable[[list[str]], Any]], states: dict[str, Any], queries: list[str],
                repeat: int, merged_name: str) -> list[list[str]]:
    timed = {}
    for name, state in states.items():
        fn = searcher(state)
        fn(queries[:10])  # warm (compiles once, loads lazily built tables)
        t_batch, _ = best_of(lambda: fn(queries), repeat)
        t_one = one_by_one(fn, queries)
        timed[name] = (len(queries) / t_batch, len(queries) / t_one)
    ref = timed[merged_name]
    return [[f"search {name}", f"{b:,.0f} QPS", f"{b / ref[0]:.2f}x merged; one query per call {o:,.0f} QPS "
             f"({o / ref[1]:.2f}x)"] for name, (b, o) in timed.items()]


def filter_table(sel_masks: list[tuple[float, Any, Callable[[], Any]]], unfiltered: Callable[[], Any],
                 post: Callable[[Any, Any], np.ndarray], k: int, nq: int, repeat: int) -> list[list[str]]:
    """Rows for each selectivity: pre-filtered QPS vs unfiltered, and what post-filtering finds."""
    t_un, (useg, _) = best_of(unfiltered, repeat)
    rows = [["unfiltered exact search (merged)", f"{nq / t_un:,.0f} QPS", f"{hits_count(useg).mean():.2f} results/query"]]
    for sel, allowed, fn in sel_masks:
        fn()
        t, (seg, _) = best_of(fn, repeat)
        pre = hits_count(seg)
        post_found = post(allowed, useg)
        missed = pre - post_found
        rows.append([f"filter {sel:.2%} of docs: pre-filtered exact", f"{nq / t:,.0f} QPS",
                     f"{t_un / t:.2f}x unfiltered; {pre.mean():.2f} results/query (< k for "
                     f"{int((pre < k).sum())}/{nq}); post-filter (top {k} then drop): {post_found.mean():.2f}/query, "
                     f"< k for {int((post_found < k).sum())}/{nq}, misses {int(missed.sum()):,} results "
                     f"pre-filtering finds"])
    return rows


def filter_rows_bm25(args: argparse.Namespace, col: Any, queries: list[str], buckets: np.ndarray) -> list[list[str]]:
    k, nq = args.k, len(queries)
    seg = col.snapshot.segments[0]
    order = np.array([int(i[1:]) for i in seg.ids.tolist()])  # position -> document number
    pos_bucket = buckets[order]

    def unfiltered() -> Any:
        r = col.search(queries, k=k)
        return r.ids, r.scores

    def run(spec: dict) -> Callable[[], Any]:
        def fn() -> Any:
            r = col.search(queries, k=k, filter=spec)
            return r.ids, r.scores
        return fn

    # the positions post-filtering keeps: the unfiltered top k that the filter allows
    res = col.search(queries, k=k)
    top_pos = np.full(res.ids.shape, -1, np.int64)
    ok = res.ids >= 0
    top_pos[ok] = [int(res.doc_ids[i][1:]) for i in res.ids[ok].tolist()]

    def post(limit: int, _useg: Any) -> np.ndarray:
        return ((top_pos >= 0) & (buckets[np.maximum(top_pos, 0)] < limit)).sum(axis=1)

    cases = []
    for sel in SELECTIVITIES:
        limit = max(1, int(round(sel * BUCKETS)))
        cases.append((float((pos_bucket < limit).mean()), limit, run({"bucket": {"$lt": limit}})))
    return filter_table(cases, unfiltered, post, k, nq, args.repeat)


def splade_rows(args: argparse.Namespace, root: Path, n: int, n_add: int) -> list[list[str]]:
    total = n + n_add
    enc = StubEncoder(sparse_vectors(total, args.doc_nnz, args.seed), sparse_vectors(args.queries, 50, 7))
    engine = stub_engine(enc)
    queries = [f"q{i}" for i in range(args.queries)]
    rows: list[list[str]] = []

    def write(name: str, a: int, b: int) -> Any:
        d = root / name
        d.mkdir(parents=True)
        engine.write_segment([f"d{i}" for i in range(a, b)], d)
        return engine.open_segment(d, b - a)

    warm = [write("warm/s0", 0, 20), write("warm/s1", 20, 40)]  # imports and kernel compiles, not timed
    engine.search(queries[:2], args.k, [(warm[0], None)], allowed=[np.arange(20) < 3])
    engine.search(queries[:2], args.k, [(w, None) for w in warm], allowed=[np.arange(20) < 3] * 2)
    engine.search(queries[:2], args.k, [(w, None) for w in warm])
    t0 = time.perf_counter()
    full = write("rebuild/s0", 0, total)
    t_rebuild = time.perf_counter() - t0
    write("incr/s0", 0, n)
    t0 = time.perf_counter()
    write("incr/s1", n, total)
    t_add = time.perf_counter() - t0
    rows.append([f"add {n_add:,} docs to {n:,} (write one segment)", f"{t_add:.2f} s",
                 f"{n_add / t_add:,.0f} docs/s (stub encoding, no model)"])
    rows.append([f"full rebuild of {total:,} docs (one segment)", f"{t_rebuild:.2f} s",
                 f"{total / t_rebuild:,.0f} docs/s; add = {t_add / t_rebuild:.2f}x rebuild"])
    states: dict[str, list] = {"1 segment (one write)": [full]}
    for s in (8, 32):
        bounds = np.linspace(0, total, s + 1).astype(int)
        states[f"{s} segments"] = [write(f"seg{s}/s{i:02d}", a, b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    (root / "merged").mkdir()
    t0 = time.perf_counter()
    parts32 = states["32 segments"]
    engine.merge_segments([(p, np.ones(p.n_docs, bool)) for p in parts32], root / "merged")
    t_merge = time.perf_counter() - t0
    merged = engine.open_segment(root / "merged", total)
    states["merged (merge_segments of the 32)"] = [merged]
    rows.append(["merge the 32 segments into 1", f"{t_merge:.2f} s", "stored vectors, no re-encoding"])
    t0 = time.perf_counter()
    engine.search(queries[:1], args.k, [(p, None) for p in parts32])
    t_join = time.perf_counter() - t0
    rows.append(["first search of the 32 segments (one query)", f"{t_join:.2f} s",
                 "joins the small segments' posting lists into groups, once per snapshot"])
    rows += search_rows(lambda parts: (lambda qs: engine.search(qs, args.k, [(p, None) for p in parts])), states,
                        queries, args.repeat, "merged (merge_segments of the 32)")
    buckets = np.random.default_rng(args.seed + 1).integers(0, BUCKETS, total)
    useg_top: list = []

    def unfiltered() -> Any:
        seg, pos, sc = engine.search(queries, args.k, [(merged, None)])
        useg_top[:] = [pos]
        return seg, pos

    def post(allowed: np.ndarray, _useg: Any) -> np.ndarray:
        pos = useg_top[0]
        return ((pos >= 0) & allowed[np.maximum(pos, 0)]).sum(axis=1)

    cases = []
    for sel in SELECTIVITIES:
        allowed = buckets < max(1, int(round(sel * BUCKETS)))
        cases.append((float(allowed.mean()), allowed,
                      (lambda a: lambda: engine.search(queries, args.k, [(merged, None)], allowed=[a])[:2])(allowed)))
    rows += filter_table(cases, unfiltered, post, args.k, len(queries), args.repeat)
    m = measure_rss("splade", root / "merged", queries)
    rows.append(["memory: RSS growth after open (fresh process, merged)", f"{m['open_kib'] / 1024:.1f} MiB",
                     f"{m['open_kib'] * 1024 / total:.0f} B/doc; after 100 queries {m['search_kib'] / 1024:.1f} MiB "
                     f"({m['search_kib'] * 1024 / total:.0f} B/doc)"])
    rows.append(["disk per document (merged segment's engine files)", f"{dir_size(root / 'merged') / total:.0f} B",
                 f"{args.doc_nnz} terms/doc on average (float32 weights, block-compressed postings)"])
    return rows


def table(title: str, rows: list[list[str]]) -> str:
    out = [f"### {title}", "", "| measure | value | detail |", "|---|---:|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, help="documents before the add (the add is 10%% more; default 100000)")
    ap.add_argument("--queries", type=int, help="default 1000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--doc-nnz", type=int, default=250, help="mean terms per synthetic SPLADE document")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a small size for a smoke test")
    ap.add_argument("--only", choices=("bm25", "splade"), help="run one of the two collections")
    ap.add_argument("--markdown", type=Path, help="also write the tables to this file")
    ap.add_argument("--workdir", type=Path, help="where to build (default: a temporary directory, removed)")
    ap.add_argument("--rss-worker", nargs=3, metavar=("KIND", "PATH", "QUERIES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_worker:
        rss_worker(*args.rss_worker)
        return 0
    quick = (300, 20, 1) if args.quick else (100_000, 1000, 3)  # --quick: a small size (seconds)
    args.docs, args.queries, args.repeat = (given or default for given, default in
                                           zip((args.docs, args.queries, args.repeat), quick))
    n, n_add = args.docs, args.docs // 10
    command = "python scripts/bench_collection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_collection_"))
    root.mkdir(parents=True, exist_ok=True)
    parts = [f"# Collection benchmark\n\n{machine_line()}; `{command.strip()}`; load average "
             f"{os.getloadavg()[0]:.1f}; k={args.k}, {args.queries} queries, one thread, best of {args.repeat}.\n"]
    try:
        if args.only in (None, "bm25"):
            rows, _ = bm25_rows(args, root / "bm25", n, n_add)
            parts.append(table(f"BM25 collection (lsr.Collection): {n:,} + {n_add:,} synthetic documents", rows))
            print(parts[-1], flush=True)
        if args.only in (None, "splade"):
            rows = splade_rows(args, root / "splade", n, n_add)
            parts.append(table(f"SPLADE engine segments: {n:,} + {n_add:,} synthetic splade-like vectors "
                               "(encoder stub; splade-tiny encodes ~20 docs/s on 2 cores)", rows))
            print(parts[-1], flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(parts)
    print(parts[0])
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
