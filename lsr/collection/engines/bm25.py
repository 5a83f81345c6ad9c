"""BM25 over segments with live statistics: scores equal a fresh build over the live documents.

BM25's weights depend on the whole corpus (N, df, average length), so a segment stores no
weights, only what they are made from:

* ``terms.parquet`` (column ``term``): the segment's own vocabulary (new documents bring new terms);
* ``offsets.npy`` (int64, V + 1), ``docs.npy`` (int32), ``tf.npy`` (int32): term-major postings,
  positions ascending within a term;
* ``lengths.npy`` (int32, n_docs): analysed lengths (Lucene's one-byte norm is derived from them).

At search time the engine computes, from the LIVE documents of the snapshot, N (live documents
with at least one term), df and the average length (cached per snapshot: segment directories and
live masks), and scores only the query terms' postings, term at a time, with the weights
``idf - idf / (1 + tf * inv_norm[doc])`` in float32 as :class:`lsr.encoders.bm25.BM25Encoder`
computes them. So every state (before or after merges, with deletes) scores as a fresh
``BM25Retriever`` over the surviving documents (docs/collections.md, "Scores").

Statistics of other collections (sharded search, :mod:`lsr.distributed.search`): a collection
split into shards scores like one collection only when every shard weights its postings with the
statistics of all shards. :meth:`BM25Engine.statistics` gives a snapshot's N, total length and
each query term's df (:class:`BM25Statistics`, summed over shards with
:meth:`BM25Statistics.total`), and ``search(..., statistics=...)`` (a search option, so also
``Collection.search(..., statistics=...)``) scores with such global statistics instead of the
snapshot's own; the postings searched and the tie order are still the snapshot's.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lsr.collection.engines.base import (
    Engine,
    Hits,
    check_n_docs,
    check_search,
    mask_digest,
    merge_hits,
    parts_mask,
)
from lsr.encoders.bm25 import BM25Encoder, lucene_norm_decode, lucene_norm_encode
from lsr.errors import IndexFormatError
from lsr.io.manifest import load_array, read_manifest, read_parquet, save_array, write_manifest
from lsr.retrievers.options import BM25Options

logger = logging.getLogger(__name__)

__all__ = ["BM25Engine", "BM25Part", "BM25Statistics"]

FORMAT, VERSION = "lsr.segment.bm25", 1
SNAPSHOTS_CACHED = 4  # snapshots whose statistics are kept (readers of a few commits at once)


class BM25Part:
    """One segment's term-major (doc, tf) postings and document lengths (memory-mapped)."""

    def __init__(self, directory: Path, terms: list[str], offsets: np.ndarray, docs: np.ndarray,
                 tf: np.ndarray, lengths: np.ndarray) -> None:
        self.directory = Path(directory)
        self.terms, self.offsets, self.docs, self.tf, self.lengths = terms, offsets, docs, tf, lengths
        self.n_docs = int(lengths.size)
        self._term_ids: dict[str, int] | None = None
        self._live_stats: dict[bytes, tuple[np.ndarray, int, int]] = {}
        self._lock = threading.Lock()

    def term_id(self, term: str) -> int | None:
        if self._term_ids is None:
            self._term_ids = {t: i for i, t in enumerate(self.terms)}
        return self._term_ids.get(term)

    def live_stats(self, live: np.ndarray | None, digest: bytes) -> tuple[np.ndarray, int, int]:
        """(df of each term over the live documents, live documents with >= 1 term, their total length)."""
        with self._lock:
            got = self._live_stats.get(digest)
            if got is None:
                if live is None:
                    df = np.diff(self.offsets).astype(np.int64)
                    lengths = self.lengths
                else:
                    alive = live[self.docs].astype(np.int64)
                    df = np.add.reduceat(alive, self.offsets[:-1]) if alive.size else np.zeros(len(self.terms), np.int64)
                    df[np.diff(self.offsets) == 0] = 0  # reduceat repeats the next value for empty runs
                    lengths = self.lengths[live]
                got = (df, int(np.count_nonzero(lengths)), int(lengths.sum(dtype=np.int64)))
                if len(self._live_stats) >= SNAPSHOTS_CACHED:
                    self._live_stats.pop(next(iter(self._live_stats)))
                self._live_stats[digest] = got
            return got


@dataclass(frozen=True)
class BM25Statistics:
    """What BM25 weights are made from, over some set of live documents: ``n_docs`` (documents
    with at least one term), ``sum_lengths`` (their total analysed length) and ``df`` (each
    term's document frequency; only the terms a search needs)."""

    n_docs: int
    sum_lengths: int
    df: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def total(cls, parts: Iterable["BM25Statistics"]) -> "BM25Statistics":
        """The statistics of the union of disjoint document sets (shards): every count summed."""
        n = total_len = 0
        df: dict[str, int] = {}
        for p in parts:
            n += int(p.n_docs)
            total_len += int(p.sum_lengths)
            for term, d in p.df.items():
                df[term] = df.get(term, 0) + int(d)
        return cls(n, total_len, df)


class _Snapshot:
    """Global statistics of one snapshot: a BM25Encoder holding N and the total length (its
    ``idf``/``avgdl`` are what a fresh fit computes), each segment's live df and inv_norm, and
    (on first search) the kernel's view of the segments and each queried term's ids and idf."""

    def __init__(self, encoder: BM25Encoder, parts: list[BM25Part], dfs: list[np.ndarray],
                 inv_norms: list[np.ndarray]) -> None:
        self.encoder, self.parts, self.dfs, self.inv_norms = encoder, parts, dfs, inv_norms
        self.bases = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([p.n_docs for p in parts], out=self.bases[1:])
        self._kernel_args: tuple | None = None
        self._terms: dict[str, tuple[np.ndarray, np.float32]] = {}
        self._lock = threading.Lock()

    def kernel_args(self) -> tuple:
        """(typed lists of offsets, docs, tf; the collection-wide inv_norm), made once."""
        with self._lock:
            if self._kernel_args is None:
                lists = _kernels().segment_lists([p.offsets for p in self.parts], [p.docs for p in self.parts],
                                                 [p.tf for p in self.parts])
                inv = np.concatenate(self.inv_norms) if self.inv_norms else np.zeros(0, np.float32)
                self._kernel_args = (*lists, np.ascontiguousarray(inv, np.float32))
            return self._kernel_args

    def local_df(self, words: list[str]) -> np.ndarray:
        """Each word's document frequency over this snapshot's live documents."""
        df = np.zeros(len(words), np.int64)
        for s, part in enumerate(self.parts):
            ids = np.fromiter((-1 if (t := part.term_id(w)) is None else t for w in words), np.int64, len(words))
            has = ids >= 0
            df[has] += self.dfs[s][ids[has]]
        return df

    def terms(self, words: list[str], global_df: Mapping[str, int] | None = None
              ) -> list[tuple[np.ndarray, np.float32]]:
        """Each word's term id in every segment (-1: absent, or no live document has it) and its
        idf over the live documents (as a fresh fit computes it); cached per snapshot. With
        ``global_df`` the idf is computed from those document frequencies (and this snapshot's
        encoder's N, the global one), not cached."""
        if global_df is not None:
            uniq = list(dict.fromkeys(words))
            local = np.full((len(self.parts), len(uniq)), -1, np.int64)
            for s, part in enumerate(self.parts):
                local[s] = np.fromiter((-1 if (t := part.term_id(w)) is None else t for w in uniq), np.int64,
                                       len(uniq))
            own = self.local_df(uniq)
            local[:, own == 0] = -1
            df = np.asarray([int(global_df[w]) for w in uniq], np.int64)
            if np.any(df < own):
                w = uniq[int(np.flatnonzero(df < own)[0])]
                raise ValueError(f"statistics: df {global_df[w]} of {w!r} is below this collection's own")
            idf = BM25Encoder.idf(SimpleNamespace(df=df, n_docs=self.encoder.n_docs)).astype(np.float32)
            got = {w: (local[:, j].copy(), idf[j]) for j, w in enumerate(uniq)}
            return [got[w] for w in words]
        missing = [w for w in dict.fromkeys(words) if w not in self._terms]
        if missing:
            local = np.full((len(self.parts), len(missing)), -1, np.int64)
            df = np.zeros(len(missing), np.int64)
            for s, part in enumerate(self.parts):
                ids = np.fromiter((-1 if (t := part.term_id(w)) is None else t for w in missing), np.int64,
                                  len(missing))
                has = ids >= 0
                local[s] = ids
                df[has] += self.dfs[s][ids[has]]
            local[:, df == 0] = -1
            idf = BM25Encoder.idf(SimpleNamespace(df=df, n_docs=self.encoder.n_docs)).astype(np.float32)
            for j, w in enumerate(missing):
                self._terms[w] = (local[:, j].copy(), idf[j])
        return [self._terms[w] for w in words]


class BM25Engine(Engine):
    """BM25 (Lucene's scoring, Anserini's defaults) with statistics from the live documents."""

    name = "bm25"
    options_class = BM25Options

    def __init__(self, options: BM25Options) -> None:
        super().__init__(options)
        from lsr.retrievers.sparse import BM25Retriever

        # the encoder a fresh BM25Retriever with these options builds (its analyzer, k1, b, norms)
        self.encoder: BM25Encoder = BM25Retriever.from_options(options).encoder
        self._snapshots: OrderedDict[tuple, _Snapshot] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def state(self) -> dict[str, Any]:
        e = self.encoder
        return {"k1": e.k1, "b": e.b, "lucene_norms": e.lucene_norms, "analyzer": e.analyzer.config()}

    # ------------------------------------------------------------------ writing
    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        counter = BM25Encoder(self.encoder.k1, self.encoder.b, self.encoder.analyzer, self.encoder.lucene_norms)
        tf, lengths = counter._count(list(texts), grow=True, show_progress=show_progress)  # the encoder's analysis
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(tf.indptr))
        _write(Path(directory), list(counter.vocab), tf.indices.astype(np.int64), rows,
               tf.data.astype(np.int32), lengths)

    def merge_segments(self, parts: Sequence[tuple[BM25Part, np.ndarray]], directory: Path) -> None:
        keeps = parts_mask(parts)
        vocab: dict[str, int] = {}
        term_parts, doc_parts, tf_parts, len_parts = [], [], [], []
        base = 0
        for (part, _), keep in zip(parts, keeps):
            local = np.fromiter((vocab.setdefault(t, len(vocab)) for t in part.terms), np.int64, len(part.terms))
            new_pos = np.cumsum(keep) - 1 + base
            terms = np.repeat(np.arange(len(part.terms), dtype=np.int64), np.diff(part.offsets))
            kept = keep[part.docs]
            term_parts.append(local[terms[kept]])
            doc_parts.append(new_pos[part.docs[kept]])
            tf_parts.append(np.asarray(part.tf)[kept])
            len_parts.append(np.asarray(part.lengths)[keep])
            base += int(keep.sum())
        terms = np.concatenate(term_parts) if term_parts else np.zeros(0, np.int64)
        docs = np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int64)
        tf = np.concatenate(tf_parts) if tf_parts else np.zeros(0, np.int32)
        lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
        names = list(vocab)
        used = np.zeros(len(names), bool)
        used[terms] = True  # terms of deleted documents only are dropped
        remap = np.cumsum(used) - 1
        _write(Path(directory), [t for t, u in zip(names, used) if u], remap[terms], docs, tf, lengths)

    # ------------------------------------------------------------------ reading
    def open_segment(self, directory: Path, n_docs: int) -> BM25Part:
        directory = Path(directory)
        m = read_manifest(directory, FORMAT, VERSION, verify=False)  # sizes; the segment manifest has the hashes
        try:
            n, v, nnz = int(m["n_docs"]), int(m["n_terms"]), int(m["n_postings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{directory}/manifest.json: missing or bad field ({exc})") from exc
        check_n_docs(directory, n, n_docs)
        try:
            table = read_parquet(directory / "terms.parquet")
            terms = table.column("term").to_pylist()
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise IndexFormatError(f"{directory}/terms.parquet: unreadable ({exc})") from exc
        if len(terms) != v or len(set(terms)) != v or any(not isinstance(t, str) for t in terms):
            raise IndexFormatError(f"{directory}/terms.parquet: expected {v} distinct terms, found {len(terms)}")
        offsets = load_array(directory, "offsets.npy", np.int64, (v + 1,))
        docs = load_array(directory, "docs.npy", np.int32, (nnz,))
        tf = load_array(directory, "tf.npy", np.int32, (nnz,))
        lengths = load_array(directory, "lengths.npy", np.int32, (n,))
        bad = None
        if offsets[0] != 0 or offsets[-1] != nnz or np.any(np.diff(offsets) < 1):
            bad = "offsets.npy: not increasing from 0 to the number of postings"
        elif nnz and (int(docs.min()) < 0 or int(docs.max()) >= n):
            bad = f"docs.npy: positions outside [0, {n})"
        elif nnz and int(tf.min()) < 1:
            bad = "tf.npy: a term frequency below 1"
        elif n and int(lengths.min()) < 0:
            bad = "lengths.npy: a negative length"
        elif nnz > 1:
            step = np.diff(docs.astype(np.int64))
            starts = np.zeros(nnz - 1, bool)
            starts[offsets[1:-1] - 1] = True  # the first posting of a term may go back
            if np.any((step <= 0) & ~starts):
                bad = "docs.npy: positions not ascending within a term"
            elif np.any(np.bincount(docs, weights=tf, minlength=n) > lengths):
                bad = "tf.npy: term frequencies above the document's length"
        if bad:
            raise IndexFormatError(f"{directory}/{bad}")
        return BM25Part(directory, terms, offsets, docs, tf, lengths)

    def _snapshot(self, segments: Sequence[tuple[BM25Part, np.ndarray | None]]) -> _Snapshot:
        digests = [mask_digest(live) for _, live in segments]
        key = tuple((str(p.directory), id(p), d) for (p, _), d in zip(segments, digests))
        with self._lock:
            snap = self._snapshots.get(key)
            if snap is not None:
                self._snapshots.move_to_end(key)
                return snap
        stats = [p.live_stats(live, d) for (p, live), d in zip(segments, digests)]
        e = self.encoder
        enc = BM25Encoder(e.k1, e.b, e.analyzer, e.lucene_norms)
        enc.n_docs = sum(s[1] for s in stats)
        enc.sum_lengths = sum(s[2] for s in stats)
        inv_norms = [self._inv_norm(enc, p.lengths) for p, _ in segments] if enc.n_docs else []
        snap = _Snapshot(enc, [p for p, _ in segments], [s[0] for s in stats], inv_norms)
        with self._lock:
            self._snapshots[key] = snap
            while len(self._snapshots) > SNAPSHOTS_CACHED:
                self._snapshots.popitem(last=False)
        return snap

    def _global_snapshot(self, segments: Sequence[tuple[BM25Part, np.ndarray | None]],
                         stats: BM25Statistics) -> _Snapshot:
        """The snapshot's postings and live masks weighted with ``stats`` (N, average length)."""
        own = self._snapshot(segments)
        if stats.n_docs < own.encoder.n_docs or stats.sum_lengths < own.encoder.sum_lengths:
            raise ValueError(f"statistics: n_docs {stats.n_docs} / sum_lengths {stats.sum_lengths} cover fewer "
                             f"documents than this collection's live ones ({own.encoder.n_docs} / "
                             f"{own.encoder.sum_lengths})")
        key = ("global", tuple(id(p) for p in own.parts), tuple(map(mask_digest, (live for _, live in segments))),
               int(stats.n_docs), int(stats.sum_lengths))
        with self._lock:
            snap = self._snapshots.get(key)
            if snap is not None:
                self._snapshots.move_to_end(key)
                return snap
        e = self.encoder
        enc = BM25Encoder(e.k1, e.b, e.analyzer, e.lucene_norms)
        enc.n_docs, enc.sum_lengths = int(stats.n_docs), int(stats.sum_lengths)
        inv_norms = [self._inv_norm(enc, p.lengths) for p in own.parts] if own.encoder.n_docs else []
        snap = _Snapshot(enc, own.parts, own.dfs, inv_norms)
        with self._lock:
            self._snapshots[key] = snap
            while len(self._snapshots) > 2 * SNAPSHOTS_CACHED:
                self._snapshots.popitem(last=False)
        return snap

    def _query_terms(self, queries: Sequence[str]) -> tuple[np.ndarray, list[str], list[int]]:
        """Each query's distinct analysed terms, sorted (the order their weights are summed in):
        ``(indptr, words, counts)``."""
        indptr = np.zeros(len(queries) + 1, np.int64)
        words: list[str] = []
        counts: list[int] = []
        for qi, text in enumerate(queries):
            terms, n = np.unique(np.asarray(self.encoder.analyzer(text), dtype=object).astype(str),
                                 return_counts=True)
            words.extend(terms.tolist())
            counts.extend(n.tolist())
            indptr[qi + 1] = len(words)
        return indptr, words, counts

    def statistics(self, queries: Sequence[str] | str,
                   segments: Sequence[tuple[BM25Part, np.ndarray | None]]) -> BM25Statistics:
        """The live documents' N, total length and the df of every term of ``queries`` (what
        another collection's search needs to score as if these documents were its own)."""
        from lsr.retrievers.base import as_queries

        words = list(dict.fromkeys(self._query_terms(as_queries(queries))[1]))
        if not segments:
            return BM25Statistics(0, 0, {w: 0 for w in words})
        snap = self._snapshot(segments)
        df = snap.local_df(words)
        return BM25Statistics(int(snap.encoder.n_docs), int(snap.encoder.sum_lengths),
                              {w: int(d) for w, d in zip(words, df.tolist())})

    @staticmethod
    def _inv_norm(enc: BM25Encoder, lengths: np.ndarray) -> np.ndarray:
        # the same float32 steps as BM25Encoder._impacts (tests check the weights bit for bit)
        dl = lucene_norm_decode(lucene_norm_encode(lengths)) if enc.lucene_norms else np.asarray(lengths)
        avgdl = np.float32(enc.avgdl)
        with np.errstate(divide="ignore"):  # k1 = 0: inv_norm is inf and every weight is the idf
            return (1.0 / (enc.k1 * ((1 - enc.b) + enc.b * dl.astype(np.float32) / avgdl))).astype(np.float32)

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[BM25Part, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        """Top-``k`` (base interface). Search option ``statistics``: a :class:`BM25Statistics`
        (N, total length, the df of every query term) to weight with instead of the snapshot's own,
        e.g. the sum over the shards of a sharded collection (:mod:`lsr.distributed.search`)."""
        stats = search_options.pop("statistics", None)
        if stats is not None and not isinstance(stats, BM25Statistics):
            raise TypeError(f"statistics must be a BM25Statistics, got {type(stats).__name__}")
        queries, k, masks = check_search(queries, k, segments, allowed, search_options, self.name)
        nq = len(queries)
        if not segments:
            return merge_hits([], nq, k)
        snap = self._snapshot(segments)
        if not snap.encoder.n_docs:  # no live document has a term: nothing matches
            return merge_hits([], nq, k)
        indptr, words, counts = self._query_terms(queries)
        if stats is not None:
            missing = [w for w in dict.fromkeys(words) if w not in stats.df]
            if missing:
                raise ValueError(f"statistics: no df for query term(s) {', '.join(map(repr, missing[:5]))}")
            snap = self._global_snapshot(segments, stats)
        info = snap.terms(words, None if stats is None else stats.df)
        n_seg = len(segments)
        q_terms = np.stack([t for t, _ in info], axis=1) if info else np.zeros((n_seg, 0), np.int64)
        q_idf = np.asarray([f for _, f in info], np.float32)
        q_counts = np.asarray(counts, np.float32)
        bases = snap.bases
        if all(m is None for m in masks):
            mask, rows, row_bounds = _NO_MASK, _NO_ROWS, np.zeros(n_seg + 1, np.int64)
        else:
            mask = np.concatenate([np.ones(p.n_docs, bool) if m is None else m for (p, _), m in zip(segments, masks)])
            rows = np.flatnonzero(mask)
            row_bounds = np.searchsorted(rows, bases)
            mask = mask.view(np.uint8)
        offsets_l, docs_l, tf_l, inv_norm = snap.kernel_args()
        acc, seen, touched = self._scratch(max(p.n_docs for p, _ in segments))
        glob = np.empty((nq, k), np.int64)
        scores = np.empty((nq, k), np.float32)
        _kernels().search_snapshot(indptr, q_terms, q_counts, q_idf, offsets_l, docs_l, tf_l, inv_norm, bases,
                                   mask, mask is not _NO_MASK, rows, row_bounds, k, acc, seen, touched, glob, scores)
        found = glob >= 0
        seg = np.where(found, np.searchsorted(bases, glob, side="right") - 1, -1)
        pos = np.where(found, glob - bases[np.maximum(seg, 0)], -1)
        return seg, pos, scores

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This thread's kernel accumulators (the kernel leaves them zero), at least ``n`` long."""
        got = getattr(self._local, "scratch", None)
        if got is None or got[0].size < n:
            got = (np.zeros(n, np.float32), np.zeros(n, np.bool_), np.empty(n, np.int64))
            self._local.scratch = got
        return got


_NO_ROWS = np.zeros(0, np.int64)
_NO_MASK = np.zeros(0, np.uint8)


def _kernels() -> Any:
    from lsr.collection import _bm25_kernels

    return _bm25_kernels


def _write(directory: Path, terms: list[str], term_of: np.ndarray, docs: np.ndarray, tf: np.ndarray,
           lengths: np.ndarray) -> None:
    """Term-major postings (by term id, then position) from (term, doc, tf) triples, and the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.lexsort((docs, term_of))
    offsets = np.zeros(len(terms) + 1, np.int64)
    np.cumsum(np.bincount(term_of, minlength=len(terms)), out=offsets[1:])
    pq.write_table(pa.table({"term": pa.array(terms, pa.string())}), directory / "terms.parquet")
    save_array(directory, "offsets.npy", offsets)
    save_array(directory, "docs.npy", np.asarray(docs, np.int64)[order].astype(np.int32))
    save_array(directory, "tf.npy", np.asarray(tf)[order].astype(np.int32))
    save_array(directory, "lengths.npy", np.asarray(lengths).astype(np.int32))
    write_manifest(directory, FORMAT, VERSION, {"n_docs": int(len(lengths)), "n_terms": len(terms),
                                                "n_postings": int(order.size)})
