"""Issue 14's equality check on whole BEIR corpora: a 4-shard collection (built by Ray tasks) vs one collection.

For each dataset, both are built from the corpus in file order (title + text, metadata
``{"bucket": position % 10}``), by default from the same document vectors (``--vectors once``:
each model encodes the corpus once, or the SPLADE side is read from ``lsr encode`` shards given
by ``--doc-vectors``, and both builds index those vectors, as a distributed build from encoded
shards does); ``--vectors each`` lets each build encode its own documents instead (one
collection's batches, then each shard's). Every test query is searched with ``k`` (default 100)
unfiltered and with the filters ``bucket < 5`` (50%) and ``bucket == 3`` (10%), and each sharded
ranking is compared with the unsharded one: scores within 1e-5 at every rank (relative to
max(1, score): float32 scores of 10 to 100 carry about 1e-6 of rounding), and the same ids in
the same order (with ``--vectors each``, swaps of documents whose scores are within 1e-5 are
counted apart and allowed: a model encodes a document differently in the last bits in another
batch).
Model-based retrievers take a ``--retriever`` and ``--model``, a hybrid its ``--components``.

    python scripts/check_sharded.py --datasets scifact,nfcorpus --retriever bm25
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FILTERS = {"none": None, "bucket<5": {"bucket": {"$lt": 5}}, "bucket=3": {"bucket": 3}}


def only_near_ties(ha: list, hb: list, tol: float = 1e-5) -> bool:
    """Do two rankings (``(id, score)`` lists, scores rank-aligned within ``tol``) differ only by
    swaps among documents whose scores are within ``tol`` of each other (model encoders give
    last-bit differences by batch)? Each document of one must be in the other at a rank whose
    score is within ``tol`` of its own, except at the cut-off of ``k``."""
    where = {d: s for d, s in hb}
    last = hb[-1][1] if hb else 0.0
    for d, s in ha:
        if d in where:
            if abs(where[d] - s) > tol:
                return False
        elif abs(s - last) > tol:  # fell out of the other's top k: only a tie at the boundary may
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "beir")
    ap.add_argument("--retriever", default="bm25")
    ap.add_argument("--model", help="model directory for a model-based retriever")
    ap.add_argument("--components", help="hybrid components, e.g. bm25,splade=DIR")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--vectors", choices=("once", "each"), default="once",
                    help="once: both builds index the same document vectors; each: each build encodes")
    ap.add_argument("--doc-vectors", help="`lsr encode` shards of the sparse model, per dataset: a pattern "
                                          "with {dataset}, e.g. out/runs/{dataset}/splade-tiny-docs")
    ap.add_argument("--embedding-cache", help="dense encodings cached here (as lsr eval --embedding-cache)")
    args = ap.parse_args(argv)

    import lsr
    from lsr.distributed import ShardedSearcher, build_sharded, connect, disconnect
    from lsr.io.readers import read_corpus, read_qrels, read_queries

    options = {"model": args.model} if args.model else {}
    if args.components:
        options["components"] = args.components
    started = connect(None, num_cpus=2)
    failures = 0
    try:
        for name in args.datasets.split(","):
            d = args.data_root / name
            corpus = read_corpus(d / "corpus.jsonl")
            docs = [{"_id": i, "title": corpus.titles[j], "text": corpus.texts[j], "metadata": {"bucket": j % 10}}
                    for j, i in enumerate(corpus.ids)]
            qrels = read_qrels(d / "qrels" / "test.tsv")
            queries = read_queries(d / "queries.jsonl")
            qtexts = [queries[q] for q in qrels if q in queries]
            with tempfile.TemporaryDirectory(prefix="lsr-check-sharded-") as tmp:
                t = time.perf_counter()
                full = lsr.Collection.create(Path(tmp) / "full", args.retriever, **options)
                vectors = None if args.vectors == "each" else _encode_once(full.engine, docs, args, name)
                t_encode = time.perf_counter() - t
                full.add(docs, vectors=vectors)
                t_full = time.perf_counter() - t
                t = time.perf_counter()
                sharded = build_sharded(Path(tmp) / "sharded", docs, args.shards, args.retriever, vectors=vectors,
                                        **options)
                t_sharded = time.perf_counter() - t
                with ShardedSearcher(sharded.path) as searcher:
                    for label, flt in FILTERS.items():
                        a = full.search(qtexts, k=args.k, filter=flt)
                        b = searcher.search(qtexts, k=args.k, filter=flt)
                        same_ids = same_scores = near_ties = 0
                        worst = worst_rel = 0.0
                        for r in range(len(qtexts)):
                            ha, hb = a.hits(r), b.hits(r)
                            identical = [x for x, _ in ha] == [x for x, _ in hb]
                            same_ids += identical
                            diff = max((abs(x - y) for (_, x), (_, y) in zip(ha, hb)), default=0.0)
                            rel = max((abs(x - y) / max(1.0, abs(x)) for (_, x), (_, y) in zip(ha, hb)), default=0.0)
                            worst = max(worst, diff)
                            worst_rel = max(worst_rel, rel)
                            close = len(ha) == len(hb) and rel <= 1e-5
                            same_scores += close
                            near_ties += close and not identical and only_near_ties(ha, hb)
                        n = len(qtexts)
                        # the same vectors: nothing may differ; each build encoding: near-tie swaps allowed
                        ok = same_scores == n and same_ids + (near_ties if args.vectors == "each" else 0) == n
                        failures += not ok
                        print(f"{name} {args.retriever} filter {label}: {same_ids}/{n} rankings identical "
                              f"(top {args.k}), {near_ties} differ only in the order of documents whose scores "
                              f"are within 1e-5; scores within 1e-5 (relative to max(1, score)) at every rank for "
                              f"{same_scores}/{n} (largest difference {worst:.2e}, relative {worst_rel:.2e}) "
                              f"{'ok' if ok else 'DIFFERENT'}", flush=True)
                print(f"{name}: {len(docs)} documents, vectors {args.vectors}; encode once {t_encode:.1f} s, build "
                      f"one collection {t_full:.1f} s (with that), {args.shards} shards by Ray tasks {t_sharded:.1f} s",
                      flush=True)
                sharded.close()
                full.close()
    finally:
        disconnect(started)
    return 1 if failures else 0


def _encode_once(engine, docs: list, args, dataset: str):
    """The corpus's vectors for ``engine`` (a hybrid: per component, None for BM25), computed once."""
    from lsr.collection.docstore import contents
    from lsr.collection.encoded import EncodedDocuments

    if engine.name == "hybrid":
        return [_encode_once(e, docs, args, dataset) for e in engine.components]
    ids, texts = [d["_id"] for d in docs], contents(docs)
    if engine.name in ("splade", "inference-free"):
        if args.doc_vectors:
            return EncodedDocuments.from_shards(args.doc_vectors.format(dataset=dataset))
        return EncodedDocuments(ids, engine.encode(texts), engine.encoder.config())
    if engine.name == "dense":
        engine.encoder.cache_dir = args.embedding_cache
        return EncodedDocuments(ids, engine.encoder.encode_documents(texts), engine.encoder.config())
    return None  # bm25: nothing to encode


if __name__ == "__main__":
    sys.exit(main())
