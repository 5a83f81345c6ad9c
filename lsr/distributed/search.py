"""Sharded search on Ray: one actor per shard, the exact global top-k merged at the driver.

Each actor (:class:`ShardReader`) opens its shard readonly and answers batches of queries with
its own top-k: external ids, scores and the documents' global insertion sequence
(:data:`lsr.distributed.sharded.SEQUENCE_FIELD`). The driver (:class:`ShardedSearcher`) merges
by (score desc, sequence), which is an unsharded collection's order over the same documents added
in the same order, so results are that collection's (ids and scores), per retriever:

- **BM25**: weights depend on the whole corpus. The driver first asks every shard for its
  statistics of the batch's query terms (N, total length, df: :class:`BM25Statistics`), sums
  them and sends the sum with the search (the BM25 engine's ``statistics=`` search option), so
  every shard weights its postings as one collection over all shards would;
- **learned sparse, dense, multi-vector**: a document's score depends on nothing else: plain merge;
- **hybrid**: fusion normalises over each component's list, so each component's global
  top-``depth`` is merged from the shards' (BM25 components with global statistics) and fused
  at the driver with the hybrid engine's own fusion (:func:`lsr.fusion.combine.fuse_arrays`).

Filters (the language of :meth:`lsr.Collection.search`) are evaluated on each shard. Each search
call refreshes every shard first (``refresh=True``), so it sees their newest commits; a batch's
statistics and search read the same snapshot. A shard whose actor died, raised or timed out
makes the search raise :class:`lsr.errors.ShardError` naming it; with ``allow_partial=True`` the
other shards' merged results come back with ``missing_shards`` set (BM25 scores then use the
statistics of the shards that answered).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.collection.collection import FIELDS, Collection
from lsr.collection.engines.bm25 import BM25Statistics
from lsr.distributed.sharded import SEQUENCE_FIELD, read_manifest, shard_name, shard_of, strip_sequence
from lsr.errors import ShardError
from lsr.types import SearchResults, SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["ShardReader", "ShardedSearcher", "ShardedSearchResults", "merge_shard_hits"]

#: collections whose queries the driver encodes (encode_queries="driver"): it loads their models
QUERY_VECTOR_RETRIEVERS = ("splade", "inference-free", "dense", "hybrid")


@dataclass
class ShardedSearchResults(SearchResults):
    """:class:`~lsr.types.SearchResults` of a sharded search; ``missing_shards``: the shards that
    did not answer (only ever non-empty with ``allow_partial=True``)."""

    missing_shards: tuple[int, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


class ShardReader:
    """One shard opened readonly (the body of a Ray actor; usable in-process too).

    ``component``: None for the collection's own ranking, or a hybrid component's index (its
    unfused top-k). Results: ``{"n_live", "generation", "ids" (per query, a list), "scores" (nq, k),
    "seqs" (nq, k), "fields"}``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.col = Collection.open(path, readonly=True)
        self.last_seconds = 0.0

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def refresh(self) -> int:
        self.col.refresh()
        return self.col.generation

    def _bm25(self, component: int | None) -> Any:
        engine = self.col.engine
        return engine if component is None else engine.components[component]

    def statistics(self, queries: list[str], components: Sequence[int | None], refresh: bool = False
                   ) -> list[BM25Statistics]:
        """This shard's BM25 statistics of the queries' terms, one per (BM25) component asked."""
        t = time.perf_counter()
        if refresh:
            self.col.refresh()
        snap = self.col.snapshot
        out = []
        for c in components:
            parts = [s.part if c is None else s.part.parts[c] for s in snap.segments]
            out.append(self._bm25(c).statistics(queries, list(zip(parts, snap.lives))))
        self.last_seconds = time.perf_counter() - t
        return out

    def seconds(self) -> float:
        """Seconds the last statistics or search request took in this actor."""
        return self.last_seconds

    def search(self, queries: list[str], k: int, filter: Any = None, fields: Sequence[str] = (),
               component: int | None = None, statistics: BM25Statistics | None = None,
               refresh: bool = False, query_vectors: Any = None) -> dict[str, Any]:
        t = time.perf_counter()
        if refresh:
            self.col.refresh()
        options: dict[str, Any] = {}
        if component is not None:
            options["component"] = component
        if statistics is not None:
            options["statistics"] = statistics
        if query_vectors is not None:
            options["query_vectors"] = query_vectors
        res = self.col.search(queries, k=k, filter=filter, fields=sorted({"metadata", *fields}), **options)
        nq, kk = res.ids.shape
        seqs = np.full((nq, kk), -1, np.int64)
        ids: list[list[str]] = []
        out_fields: list[list[dict[str, Any]]] = []
        metadata = res.fields["metadata"] if res.fields else []
        for r in range(nq):
            row_ids, row_fields = [], []
            for j in range(kk):
                pos = int(res.ids[r, j])
                if pos < 0:
                    break
                md = metadata[pos]
                seqs[r, j] = int(md[SEQUENCE_FIELD])
                row_ids.append(str(res.doc_ids[pos]))
                if fields:
                    got = {f: res.fields[f][pos] for f in fields}
                    if "metadata" in got:
                        got["metadata"] = {a: b for a, b in md.items() if a != SEQUENCE_FIELD}
                    row_fields.append(got)
            ids.append(row_ids)
            out_fields.append(row_fields)
        return {"n_live": len(self.col), "generation": self.col.generation, "ids": ids,
                "scores": np.asarray(res.scores, np.float32), "seqs": seqs, "fields": out_fields,
                "seconds": time.perf_counter() - t}

    def get(self, ids: list[str], fields: Sequence[str]) -> list[dict[str, Any] | None]:
        docs = [strip_sequence(d) for d in self.col.get(ids)]
        return [None if d is None else {f: d[f] for f in fields} for d in docs]


def _rows(vectors: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of query vectors (a SparseBatch or an array)."""
    if not isinstance(vectors, SparseBatch):
        return vectors[a:b]
    lo, hi = int(vectors.indptr[a]), int(vectors.indptr[b])
    return SparseBatch(vectors.indptr[a:b + 1] - lo, vectors.indices[lo:hi], vectors.data[lo:hi],
                       vectors.vocab_size, vectors.vocab)


def merge_shard_hits(answers: Sequence[dict[str, Any]], k: int) -> list[list[tuple[float, int, str, int, int]]]:
    """Per query, the top ``k`` of the shards' answers as ``(score, seq, id, answer, rank)``,
    by (score desc, sequence): the unsharded collection's order."""
    nq = len(answers[0]["ids"]) if answers else 0
    out = []
    for r in range(nq):
        cand = [(float(a["scores"][r, j]), int(a["seqs"][r, j]), doc_id, s, j)
                for s, a in enumerate(answers) for j, doc_id in enumerate(a["ids"][r])]
        cand.sort(key=lambda c: (-c[0], c[1]))
        out.append(cand[:k])
    return out


class ShardedSearcher:
    """One Ray actor per shard of the sharded collection at ``path``, searched as one collection.

    Args:
        path: a sharded collection (:mod:`lsr.distributed.sharded`) on a file system every node sees.
        address: Ray cluster address; ``None`` uses the current connection or starts a local,
            loopback-only instance (shut down again by :meth:`close`).
        cpus_per_shard: CPUs Ray reserves per actor (default: the cluster's CPUs / shards, at most 1).
        max_restarts: how often Ray restarts a dead actor (a search in flight still fails; later
            ones reach the restarted actor). Default 0: a dead shard stays dead.
        batch_size: queries per request to each actor (requests are pipelined).
        timeout: seconds a search waits for a shard before :class:`ShardError` (None: no limit).
        encode_queries: ``"driver"`` (default): a model retriever's queries are encoded here, all of
            a call's at once as one collection's search encodes them, and each batch's rows sent to
            every shard, so all shards score the same query vectors (a model's output differs in its
            last bits with the batch and the thread count: shards that encode for themselves could
            rank near-ties differently), and the model runs once instead of once per shard;
            ``"shards"``: each actor encodes its batches (no model on the driver: a driver that
            cannot load the collection's models, or MaxSim/MUVERA collections, whose actors always
            encode). With ``"driver"`` the searcher loads the models when it starts.

    After each :meth:`search`, ``last_shard_seconds[i]`` is the time shard ``i``'s actor spent in
    its search requests (``Collection.search`` and turning its hits into a reply), so the
    fan-out overhead of a call is its wall time minus the slowest shard's.
    """

    def __init__(self, path: str | os.PathLike, address: str | None = None, cpus_per_shard: float | None = None,
                 max_restarts: int = 0, batch_size: int = 64, timeout: float | None = None,
                 encode_queries: str = "driver") -> None:
        from lsr.distributed.cluster import connect, disconnect, require_ray
        from lsr.retrievers.options import OPTIONS

        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.n_shards, self.retriever = int(self.manifest["n_shards"]), self.manifest["retriever"]
        self.batch_size, self.timeout = max(1, int(batch_size)), timeout
        options = OPTIONS[self.retriever](**self.manifest["options"])
        self.fuser = None
        self.bm25_components: list[int | None] = [None] if self.retriever == "bm25" else []
        if self.retriever == "hybrid":
            from lsr.retrievers.hybrid import parse_components

            names = [name for name, _ in parse_components(options.components)]
            self.bm25_components = [i for i, n in enumerate(names) if n == "bm25"]
            self.n_components = len(names)
            self.fuser = _Fuser(options)
        if encode_queries not in ("driver", "shards"):
            raise ValueError(f"encode_queries must be 'driver' or 'shards', got {encode_queries!r}")
        #: per leg (None: the collection's ranking, i: hybrid component i), the engine encoding its queries here
        self.query_engines: dict[int | None, Any] = {}
        if encode_queries == "driver" and self.retriever in QUERY_VECTOR_RETRIEVERS:
            from lsr.collection.engines import engine_class
            from lsr.collection.engines.base import Engine

            engine = engine_class(self.retriever).create(options)
            legs = dict(enumerate(engine.components)) if self.retriever == "hybrid" else {None: engine}
            self.query_engines = {c: e for c, e in legs.items() if type(e).query_vectors is not Engine.query_vectors}
        ray = require_ray()
        self._started = connect(address)
        try:
            if cpus_per_shard is None:
                cpus_per_shard = min(1.0, float(ray.cluster_resources().get("CPU", 1)) / self.n_shards)
            remote = ray.remote(num_cpus=cpus_per_shard, max_restarts=max_restarts)(ShardReader)
            self.actors = [remote.remote(str(self.path / shard_name(i))) for i in range(self.n_shards)]
            self.pids()  # every shard open (errors now, not at the first search)
        except BaseException:
            self._kill()
            disconnect(self._started)
            raise

    # ------------------------------------------------------------------ plumbing
    def _get(self, shard: int, ref: Any) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        where = f"shard {shard} ({self.path / shard_name(shard)})"
        try:
            return ray.get(ref, timeout=self.timeout)
        except RayActorError as exc:
            raise ShardError(shard, f"{where}: its actor died ({type(exc).__name__})") from exc
        except GetTimeoutError as exc:
            raise ShardError(shard, f"{where}: no answer within {self.timeout}s") from exc
        except RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise ShardError(shard, f"{where}: {type(cause).__name__}: {cause}".splitlines()[0]) from exc

    def _gather(self, refs: dict[int, Any], missing: set[int], allow_partial: bool) -> dict[int, Any]:
        out = {}
        for shard, ref in refs.items():
            if shard in missing:
                continue
            try:
                out[shard] = self._get(shard, ref)
            except ShardError as exc:
                if not allow_partial:
                    raise
                logger.warning("%s (left out: allow_partial)", exc)
                missing.add(shard)
        return out

    def pids(self) -> list[int]:
        """Each shard actor's process id (waits until every shard is open)."""
        return [self._get(i, a.pid.remote()) for i, a in enumerate(self.actors)]

    def nodes(self) -> list[str]:
        """The Ray node id each shard's actor runs on."""
        return [self._get(i, a.node_id.remote()) for i, a in enumerate(self.actors)]

    def refresh(self) -> list[int]:
        """Every shard's newest commit; their generations."""
        return [self._get(i, a.refresh.remote()) for i, a in enumerate(self.actors)]

    # ------------------------------------------------------------------ search
    def search(self, queries: str | Sequence[str], k: int = 10, filter: Any = None,
               fields: Sequence[str] | None = None, allow_partial: bool = False,
               refresh: bool = True) -> ShardedSearchResults:
        """Top ``k`` per query over every shard, as :meth:`lsr.Collection.search` of one collection
        holding the same documents in the same order (``filter``, ``fields`` likewise)."""
        from lsr.io.manifest import positive_int
        from lsr.retrievers.base import as_queries

        queries, k = as_queries(queries), positive_int(k, "k")
        fields = list(fields or [])
        bad = [f for f in fields if f not in FIELDS]
        if bad or isinstance(fields, str):
            raise ValueError(f"fields must be among {', '.join(FIELDS)}, got {bad or fields!r}")
        missing: set[int] = set()
        batches = [queries[i:i + self.batch_size] for i in range(0, len(queries), self.batch_size)] or [[]]
        legs: list[tuple[int | None, int]] = ([(None, k)] if self.fuser is None else
                                            [(c, self.fuser.depth) for c in range(self.n_components)])
        # round 1 (BM25): every shard's statistics of each batch's terms; the first request refreshes
        stat_refs = []
        for b, batch in enumerate(batches):
            if self.bm25_components and batch:
                stat_refs.append({s: a.statistics.remote(batch, self.bm25_components, refresh and b == 0)
                                  for s, a in enumerate(self.actors)})
            else:
                stat_refs.append(None)
        # the whole call's queries encoded at once, as one collection's search encodes them
        encoded = {c: e.query_vectors(queries) for c, e in self.query_engines.items() if queries}
        search_refs = []
        for b, batch in enumerate(batches):
            stats: dict[int | None, BM25Statistics] = {}
            if stat_refs[b] is not None:
                got = self._gather(stat_refs[b], missing, allow_partial)
                for j, c in enumerate(self.bm25_components):
                    stats[c] = BM25Statistics.total(g[j] for g in got.values())
            first = refresh and b == 0 and stat_refs[b] is None
            start = b * self.batch_size
            vectors = {c: _rows(encoded[c], start, start + len(batch)) if c in encoded and batch else None
                       for c, _ in legs}
            search_refs.append([{s: a.search.remote(batch, kk, filter, fields if self.fuser is None else (), c,
                                                    stats.get(c), first and leg == 0, vectors[c])
                                 for s, a in enumerate(self.actors) if s not in missing}
                                for leg, (c, kk) in enumerate(legs)])
        answers = [[self._gather(refs, missing, allow_partial) for refs in per_leg] for per_leg in search_refs]
        self.last_shard_seconds = [sum(leg[s]["seconds"] for per_leg in answers for leg in per_leg if s in leg)
                                   for s in range(self.n_shards)]
        if len(missing) == self.n_shards:
            raise ShardError(min(missing), f"{self.path}: no shard answered")
        return self._results(answers, missing, k, fields)

    def _results(self, answers: list[list[dict[int, Any]]], missing: set[int], k: int,
                 fields: list[str]) -> ShardedSearchResults:
        rows: list[list[tuple[float, str, dict[str, Any] | None]]] = []
        width = 0
        for per_leg in answers:  # one entry per batch
            n_live = sum(a["n_live"] for a in per_leg[0].values())
            kk = min(k, n_live)  # capped at the live documents, as Collection.search does
            width = max(width, kk)
            if self.fuser is None:
                leg = per_leg[0]
                order = sorted(leg)
                merged = merge_shard_hits([leg[s] for s in order], kk)
                rows.extend([[(sc, doc_id, leg[order[a]]["fields"][r][j] if fields else None)
                              for sc, _, doc_id, a, j in row] for r, row in enumerate(merged)])
            else:
                comp = [merge_shard_hits([leg[s] for s in sorted(leg)], self.fuser.depth) for leg in per_leg]
                rows.extend(self.fuser.fuse(comp, kk))
        if self.fuser is not None and fields:
            rows = self._fetch_fields(rows, fields, missing)
        nq = len(rows)
        ids = np.full((nq, width), -1, np.int64)
        scores = np.zeros((nq, width), np.float32)
        doc_ids: list[str] = []
        got_fields: dict[str, list] = {f: [] for f in fields}
        for r, row in enumerate(rows):
            for j, (sc, doc_id, f) in enumerate(row):
                ids[r, j], scores[r, j] = len(doc_ids), sc
                doc_ids.append(doc_id)
                for name in fields:
                    got_fields[name].append(f[name])
        return ShardedSearchResults(ids, scores, doc_ids, fields=got_fields if fields else None,
                                    missing_shards=tuple(sorted(missing)))

    def _fetch_fields(self, rows: list, fields: list[str], missing: set[int]) -> list:
        by_shard: dict[int, list[str]] = {}
        for row in rows:
            for _, doc_id, _ in row:
                by_shard.setdefault(shard_of(doc_id, self.n_shards), []).append(doc_id)
        refs = {s: self.actors[s].get.remote(list(dict.fromkeys(ids)), fields) for s, ids in by_shard.items()}
        found: dict[str, Any] = {}
        for s, docs in self._gather(refs, missing, True).items():
            found.update(zip(dict.fromkeys(by_shard[s]), docs))
        return [[(sc, doc_id, found.get(doc_id) or {f: None for f in fields}) for sc, doc_id, _ in row]
                for row in rows]

    # ------------------------------------------------------------------ closing
    def _kill(self) -> None:
        import ray

        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)
        self.actors = []

    def close(self) -> None:
        """Stop the actors (and the local Ray instance this searcher started)."""
        from lsr.distributed.cluster import disconnect

        self._kill()
        disconnect(self._started)
        self._started = False

    def __enter__(self) -> "ShardedSearcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Fuser:
    """The hybrid engine's fusion (normaliser, method, weights, depth), at the driver."""

    def __init__(self, options: Any) -> None:
        from lsr.retrievers.hybrid import HybridRetriever

        # the fusion parameters a HybridRetriever with these options uses; components are not
        # built here (no model loads at the driver): placeholders with the same count
        from lsr.retrievers.hybrid import parse_components

        n = len(parse_components(options.components))
        self.retriever = HybridRetriever([_Placeholder()] * n, norm=options.norm, fusion=options.fusion,  # type: ignore[list-item]
                                         weights=options.weights, depth=options.depth)
        self.depth = int(self.retriever.depth)

    def fuse(self, components: list[list[list[tuple[float, int, str, int, int]]]], k: int
             ) -> list[list[tuple[float, str, None]]]:
        """Each component's merged global top-depth, per query, fused; ties as the hybrid engine
        breaks them (collection order: integer ids in reverse sequence order)."""
        from lsr.fusion.combine import fuse_arrays

        nq = len(components[0])
        seqs = sorted({c[1] for comp in components for row in comp for c in row})
        rank = {s: len(seqs) - 1 - i for i, s in enumerate(seqs)}
        names = {c[1]: c[2] for comp in components for row in comp for c in row}
        ids, scores = [], []
        for comp in components:
            width = max([len(r) for r in comp] + [0])
            a = np.full((nq, width), -1, np.int64)
            s = np.zeros((nq, width), np.float64)
            for r, row in enumerate(comp):
                for j, (sc, seq, _, _, _) in enumerate(row):
                    a[r, j], s[r, j] = rank[seq], sc
            ids.append(a)
            scores.append(s)
        fused = fuse_arrays(ids, scores, **self.retriever.fuse_kwargs(k))
        by_rank = {v: names[s] for s, v in rank.items()}
        f_ids, f_scores = fused.ids[:, :k], fused.scores[:, :k]
        return [[(float(f_scores[r, j]), by_rank[int(f_ids[r, j])], None) for j in range(f_ids.shape[1])
                 if f_ids[r, j] >= 0] for r in range(nq)]


class _Placeholder:
    """Stands for a component retriever where only the fusion parameters are needed."""

    def search(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise AssertionError("a placeholder component is never searched")

