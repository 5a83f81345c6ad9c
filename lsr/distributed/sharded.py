"""A sharded collection: N ordinary lsr collections in one directory, documents routed by id.

Layout::

    PATH/
      sharded.json        format, version, shard count, retriever and options, routing rule,
                          next insertion sequence (written atomically: temporary name, fsync, rename)
      shard_000/ ...      each an ordinary lsr.Collection (docs/collections.md)

A document lives in shard ``shard_of(id, n_shards)`` (the first 8 bytes of the BLAKE2b digest of
its UTF-8 id, big-endian, modulo the shard count), so :meth:`ShardedCollection.upsert`,
:meth:`~ShardedCollection.delete` and :meth:`~ShardedCollection.get` go to that shard alone.
Every document also gets a global insertion sequence, stored in its metadata under
:data:`SEQUENCE_FIELD` (hidden from :meth:`~ShardedCollection.get` and from search fields): an
unsharded collection ranks ties by insertion order (segment, then position), and within a shard
that order is the sequence order, so merging the shards' top-k by (score desc, sequence) gives
the unsharded ranking exactly (:mod:`lsr.distributed.search`). An upserted document gets a new
sequence, as it moves to the end of an unsharded collection.

Writes on the driver need no Ray. The writer opens every shard as a writer (so holds every
``write.lock``); a change touching several shards is one commit per shard, not one atomic
commit: a crash in between leaves the shards committed so far changed (rerun the upsert or delete;
an interrupted ``add`` is finished with ``upsert``). The sequence range of a batch is reserved in
``sharded.json`` before any shard commits, so a crash only leaves a gap in the sequence.

:func:`build_sharded` creates the shards of a corpus in parallel, one Ray task per shard
(encoding and segment writing on the workers, which must see ``PATH`` on a shared file system).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from lsr.collection.collection import Collection
from lsr.collection.commit import TEMP_MARK, fsync_path, write_atomic
from lsr.collection.docstore import check_documents
from lsr.collection.encoded import EncodedDocuments
from lsr.errors import IndexFormatError

logger = logging.getLogger(__name__)

__all__ = ["ShardedCollection", "build_sharded", "shard_of", "shard_name", "read_manifest", "SEQUENCE_FIELD",
           "MANIFEST", "FORMAT", "VERSION"]

FORMAT, VERSION = "lsr.sharded_collection", 1
MANIFEST = "sharded.json"
#: the metadata key holding a document's global insertion sequence (reserved)
SEQUENCE_FIELD = "_lsr_seq"
ROUTING = "blake2b-64(utf-8 id) big-endian mod n_shards"


def shard_of(doc_id: str, n_shards: int) -> int:
    """The shard a document id is routed to (stable across processes, machines and versions)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def shard_name(i: int) -> str:
    return f"shard_{i:03d}"


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """``sharded.json`` of a sharded collection, checked (:class:`IndexFormatError` naming the field)."""
    mpath = Path(path) / MANIFEST
    try:
        m = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: not a sharded lsr collection (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{mpath}: unreadable ({exc})") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexFormatError(f"{mpath}: not an {FORMAT} manifest")
    if m.get("format_version") != VERSION:
        raise IndexFormatError(f"{mpath}: format version {m.get('format_version')!r} is not supported")
    for key in ("n_shards", "next_sequence"):
        if isinstance(m.get(key), bool) or not isinstance(m.get(key), int) or m[key] < (1 if key == "n_shards" else 0):
            raise IndexFormatError(f"{mpath}: field {key!r} must be a non-negative integer, got {m.get(key)!r}")
    if m.get("routing") != ROUTING:
        raise IndexFormatError(f"{mpath}: field 'routing' {m.get('routing')!r} is not {ROUTING!r}")
    if not isinstance(m.get("retriever"), str) or not isinstance(m.get("options"), dict):
        raise IndexFormatError(f"{mpath}: fields 'retriever' and 'options' missing")
    return m


def _write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    write_atomic(path / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    fsync_path(path, directory=True)


def _new_manifest(n_shards: int, name: str, opts: Any, next_sequence: int) -> dict[str, Any]:
    from lsr import __version__

    return {"format": FORMAT, "format_version": VERSION, "n_shards": n_shards, "retriever": name,
            "options": opts.to_dict(), "routing": ROUTING, "sequence_field": SEQUENCE_FIELD,
            "next_sequence": next_sequence, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "lsr_version": __version__}


def _checked(docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    batch = check_documents(docs)
    for d in batch:
        if SEQUENCE_FIELD in d["metadata"]:
            raise ValueError(f"document {d['_id']!r}: metadata key {SEQUENCE_FIELD!r} is reserved by sharded collections")
    return batch


def _with_sequence(batch: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    return [{**d, "metadata": {**d["metadata"], SEQUENCE_FIELD: start + i}} for i, d in enumerate(batch)]


def strip_sequence(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored document without the reserved sequence key (as it was added)."""
    if doc is None or "metadata" not in doc or not isinstance(doc["metadata"], dict):
        return doc
    return {**doc, "metadata": {k: v for k, v in doc["metadata"].items() if k != SEQUENCE_FIELD}}


def _route(batch: Sequence[dict[str, Any]], n_shards: int) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = [[] for _ in range(n_shards)]
    for d in batch:
        groups[shard_of(d["_id"], n_shards)].append(d)
    return groups


class ShardedCollection:
    """Use :meth:`create`, :meth:`open` or :func:`build_sharded`; close it (or ``with``) to release
    the shards' write locks. Search with :class:`lsr.distributed.search.ShardedSearcher`."""

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[Collection], readonly: bool) -> None:
        self.path, self.manifest, self.shards, self.readonly = path, manifest, shards, readonly
        self.n_shards = int(manifest["n_shards"])
        self.retriever = manifest["retriever"]

    @classmethod
    def create(cls, path: str | os.PathLike, n_shards: int, retriever: Any = "bm25", **options: Any
               ) -> "ShardedCollection":
        """A new, empty sharded collection at ``path`` (must not exist): ``n_shards`` empty
        collections of ``retriever`` with ``options`` (as :meth:`lsr.Collection.create`)."""
        path = Path(path)
        tmp = _prepare(path, n_shards)
        try:
            for i in range(n_shards):
                Collection.create(tmp / shard_name(i), retriever, **options).close()
            _finish(tmp, path, n_shards, 0)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False, **open_options: Any) -> "ShardedCollection":
        """Open every shard (writers take each shard's ``write.lock``; ``readonly`` takes none)."""
        path = Path(path)
        m = read_manifest(path)
        shards: list[Collection] = []
        try:
            for i in range(m["n_shards"]):
                shards.append(Collection.open(path / shard_name(i), readonly=readonly, **open_options))
                if shards[-1].retriever != m["retriever"]:
                    raise IndexFormatError(f"{path / shard_name(i)}: a {shards[-1].retriever} collection, "
                                           f"{MANIFEST} says {m['retriever']}")
        except BaseException:
            for s in shards:
                s.close()
            raise
        return cls(path, m, shards, readonly)

    # ------------------------------------------------------------------ writing
    def add(self, docs: Iterable[Mapping[str, Any]], show_progress: bool = False, vectors: Any = None) -> int:
        """Add new documents (an id already in the collection is refused, before any shard changes);
        ``vectors``: their pre-encoded vectors, as for :meth:`lsr.Collection.add`."""
        return self._add(docs, replace=False, show_progress=show_progress, vectors=vectors)

    def upsert(self, docs: Iterable[Mapping[str, Any]], show_progress: bool = False, vectors: Any = None) -> int:
        """Add documents, replacing live ones with the same ids (one commit per shard touched)."""
        return self._add(docs, replace=True, show_progress=show_progress, vectors=vectors)

    def _add(self, docs: Iterable[Mapping[str, Any]], replace: bool, show_progress: bool, vectors: Any) -> int:
        self._check_writer()
        batch = _checked(docs)
        if not batch:
            return 0
        if vectors is not None:  # every document has a vector of the right kind before any shard changes
            self.shards[0].engine.check_encoded(vectors)
            ids = [d["_id"] for d in batch]
            _each(vectors, lambda v: v.require(ids))
        groups = _route(batch, self.n_shards)
        if not replace:
            live = [d["_id"] for i, g in enumerate(groups) for d in g if self.shards[i].snapshot.locate(d["_id"])]
            if live:
                shown = ", ".join(repr(i) for i in live[:5]) + (" ..." if len(live) > 5 else "")
                raise ValueError(f"{len(live)} id(s) already in the collection: {shown} (use upsert to replace)")
        start = int(self.manifest["next_sequence"])
        self.manifest = {**self.manifest, "next_sequence": start + len(batch)}
        _write_manifest(self.path, self.manifest)  # reserved before any shard commits
        groups = _route(_with_sequence(batch, start), self.n_shards)
        for shard, group in zip(self.shards, groups):
            if group:
                (shard.upsert if replace else shard.add)(group, show_progress=show_progress, vectors=vectors)
        return len(batch)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; returns how many were live (unknown ids are ignored)."""
        self._check_writer()
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"delete takes a list of ids, not one {type(ids).__name__}")
        groups: list[list[str]] = [[] for _ in range(self.n_shards)]
        for doc_id in ids:
            if not isinstance(doc_id, str):
                raise TypeError(f"delete: id {doc_id!r} is a {type(doc_id).__name__}, not a string")
            groups[shard_of(doc_id, self.n_shards)].append(doc_id)
        return sum(shard.delete(g) for shard, g in zip(self.shards, groups) if g)

    def optimize(self) -> None:
        """Merge each shard into one segment."""
        self._check_writer()
        for shard in self.shards:
            shard.optimize()

    def _check_writer(self) -> None:
        if self.readonly:
            raise ValueError(f"{self.path}: opened readonly; open it without readonly=True to change it")

    # ------------------------------------------------------------------ reading
    def get(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The live documents with these ids, in order (None for an unknown id), as added."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"get takes a list of ids, not one {type(ids).__name__}")
        return [strip_sequence(self.shards[shard_of(i, self.n_shards)].get([i])[0]) for i in ids]

    def count(self) -> int:
        """Live documents over all shards."""
        return sum(len(s) for s in self.shards)

    __len__ = count

    def refresh(self) -> bool:
        """A reader: see every shard's newest commit; True when any changed."""
        return any([s.refresh() for s in self.shards])

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self) -> "ShardedCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedCollection({str(self.path)!r}, {self.retriever}, {self.n_shards} shards, "
                f"{self.count()} documents, {'readonly' if self.readonly else 'writer'})")


def _prepare(path: Path, n_shards: int) -> Path:
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or not 1 <= n_shards <= 999:
        raise ValueError(f"n_shards must be an integer in [1, 999], got {n_shards!r}")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists (a sharded collection is created in a new or empty directory)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def _finish(tmp: Path, path: Path, n_shards: int, next_sequence: int) -> None:
    """Write the manifest (from shard 0's options) and move the directory into place."""
    first = Collection.open(tmp / shard_name(0), readonly=True)
    _write_manifest(tmp, _new_manifest(n_shards, first.retriever, first.options, next_sequence))
    if path.is_dir():
        path.rmdir()
    os.rename(tmp, path)  # the sharded collection appears complete or not at all
    fsync_path(path.parent, directory=True)


def _each(vectors: Any, fn: Callable[[EncodedDocuments], Any]) -> Any:
    """``fn`` of the pre-encoded vectors (of each component's, for a hybrid's list; None stays None)."""
    if vectors is None:
        return None
    if isinstance(vectors, (list, tuple)):
        return [_each(v, fn) for v in vectors]
    if not isinstance(vectors, EncodedDocuments):
        raise TypeError(f"vectors: an EncodedDocuments, not {type(vectors).__name__}")
    return fn(vectors)


def _build_one(path: str, retriever: Any, options: dict[str, Any], docs: list[dict[str, Any]],
               vectors: Any = None) -> int:
    """One shard: create the collection and add its documents in one segment (a Ray task's body)."""
    with Collection.create(path, retriever, **options) as col:
        return col.add(docs, vectors=vectors)


def build_sharded(path: str | os.PathLike, docs: Iterable[Mapping[str, Any]], n_shards: int,
                  retriever: Any = "bm25", *, address: str | None = None, cpus_per_shard: float = 1,
                  max_retries: int = 1, vectors: Any = None, **options: Any) -> ShardedCollection:
    """Create a sharded collection from ``docs`` (in order: their sequence), one Ray task per shard
    writing that shard's collection (encoding included) on a worker.

    Args:
        address: a Ray cluster (``None``: the current connection, or a local loopback-only instance
            started and shut down for the build); ``path`` must be on a file system every node sees.
        cpus_per_shard: CPUs Ray reserves per task (the tasks beyond the cluster's CPUs wait).
        max_retries: how often a failed task (its worker died) is retried, into a fresh directory.
        vectors: the documents' pre-encoded vectors (as for :meth:`lsr.Collection.add`; ``lsr
            encode`` shards for instance): each task gets its shard's rows and encodes nothing, and
            the shards index exactly the vectors an unsharded collection given them indexes.
        retriever, options: as :meth:`lsr.Collection.create`.
    Returns the collection, opened as the writer."""
    from lsr.distributed.cluster import connect, disconnect, require_ray

    ray = require_ray()
    path = Path(path)
    batch = _checked(docs)
    if vectors is not None:  # refused here, in one line, before any task loads a model
        from lsr.collection.collection import _options_for
        from lsr.collection.engines import engine_class

        name, opts = _options_for(retriever, options)
        engine_class(name).create(opts).check_encoded(vectors)
    groups = _route(_with_sequence(batch, 0), n_shards)
    # each shard's rows (a document without a vector is refused here, before any task starts)
    parts = [_each(vectors, lambda v, g=g: v.subset([d["_id"] for d in g])) for g in groups]
    tmp = _prepare(path, n_shards)
    started = connect(address)
    try:
        task = ray.remote(num_cpus=cpus_per_shard, max_retries=max_retries)(_build_retry_safe)
        refs = [task.remote(str(tmp / shard_name(i)), retriever, options, g, v)
                for i, (g, v) in enumerate(zip(groups, parts))]
        for i, ref in enumerate(refs):
            try:
                ray.get(ref)
            except Exception as exc:
                raise RuntimeError(f"{path}: building {shard_name(i)} failed: {exc}") from exc
        _finish(tmp, path, n_shards, len(batch))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        disconnect(started)
    logger.info("%s: %d documents in %d shards", path, len(batch), n_shards)
    return ShardedCollection.open(path)


def _build_retry_safe(path: str, retriever: Any, options: dict[str, Any], docs: list[dict[str, Any]],
                      vectors: Any = None) -> int:
    """:func:`_build_one`, after removing what a failed earlier attempt left at ``path``."""
    target = Path(path)
    if target.exists():
        shutil.rmtree(target)
    for leftover in target.parent.glob(f".{target.name}{TEMP_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return _build_one(path, retriever, options, docs, vectors)
