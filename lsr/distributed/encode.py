"""Distributed corpus encoding on Ray: encoder actors write lsr's resumable shards.

The output directory is exactly what :func:`lsr.io.shards.encode_corpus_to_shards` writes for the
same corpus, encoder and ``shard_size`` (``progress.json``, ``doc_ids.parquet``,
``vocab.parquet``, ``shard-NNNNN.*.npy``): shard ``i`` holds documents
``[i * shard_size, (i + 1) * shard_size)`` in corpus order, whoever encodes it. Either kind of
run resumes the other's partial directory.

How the work is split:

- the driver (this process) holds the corpus as read by lsr's readers (so ids are validated and
  the corpus fingerprint is the single-process one), writes the ids, the vocabulary and
  ``progress.json``, and hands shards to the actors, at most two queued per actor;
- each actor (:class:`ShardWorker`) loads the encoder once (one model load per actor, a GPU per
  actor when the cluster has enough of them), encodes a shard and writes its three arrays
  atomically (temporary name, fsync, rename) into the output directory, which must therefore be
  on a file system every node sees;
- the driver alone rewrites ``progress.json`` (atomically) after each shard an actor reports,
  so a run stopped at any point resumes at the shards not yet recorded.

An actor whose process dies is restarted by Ray (``max_restarts``) and its shard retried
(``max_task_retries``); rewriting a shard is harmless because its bytes do not change. Encoders
reach the actors through their own ``save``/``load`` (no pickle of the model).

>>> from lsr.encoders.splade import SpladeEncoder                                  # doctest: +SKIP
>>> enc = SpladeEncoder("path/to/splade")                                          # doctest: +SKIP
>>> encode_corpus_distributed(enc, ids, texts, "out/", shard_size=10_000, workers=4)  # doctest: +SKIP
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from lsr.distributed.cluster import connect, disconnect, require_ray
from lsr.io.shards import PROGRESS, _write_json_atomic, _write_shard, prepare_run

logger = logging.getLogger(__name__)

__all__ = ["encode_corpus_distributed", "EncoderPool", "ShardWorker"]

# Shards queued per actor: one encoding, one waiting (its texts already shipped), so an actor never
# waits on the driver between shards.
_QUEUED_PER_ACTOR = 2


def _encoder_files(encoder: Any) -> dict[str, bytes]:
    """The files of ``encoder.save(dir)``, as bytes: what an actor rebuilds the encoder from."""
    if not (callable(getattr(encoder, "save", None)) and callable(getattr(type(encoder), "load", None))):
        raise TypeError(f"{type(encoder).__name__} cannot be sent to Ray workers: it needs save(directory) "
                        "and a load(directory) classmethod")
    with tempfile.TemporaryDirectory(prefix="lsr-encoder-") as tmp:
        encoder.save(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


class ShardWorker:
    """One encoder, loaded once, encoding shards into a shards directory (run as a Ray actor)."""

    def __init__(self, encoder_class: type, files: dict[str, bytes], threads: int | None = None) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="lsr-encoder-"))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            self.encoder = encoder_class.load(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if threads is not None and getattr(self.encoder, "threads", False) is None:
            self.encoder.threads = threads  # torch threads = the CPUs Ray gave this actor
        load_model = getattr(self.encoder, "load_model", None)
        if callable(load_model):
            load_model()

    def pid(self) -> int:
        """This actor's process id (tests kill it)."""
        return os.getpid()

    def encode_shard(self, out_dir: str, shard: int, start: int, texts: list[str], vocab_size: int,
                     batch_size: int | None = None) -> dict[str, Any]:
        """Encode ``texts`` (documents ``start..``), write shard ``shard``; its progress entry."""
        kwargs = {"batch_size": batch_size} if batch_size else {}
        batch = self.encoder.encode_documents(list(texts), **kwargs)
        if batch.vocab_size != vocab_size:
            raise ValueError(f"encoder produced vocab size {batch.vocab_size}, expected {vocab_size}")
        files = _write_shard(Path(out_dir), shard, batch)
        return {"shard": shard, "start": start, "stop": start + len(texts), "nnz": batch.nnz, "files": files}


class EncoderPool:
    """``workers`` Ray actors, each holding one loaded copy of ``encoder``.

    Args:
        encoder: a sparse encoder with ``save``/``load`` (BM25 fitted, SPLADE, inference-free); its
            model path must exist on every node.
        workers: number of actors (default: one per GPU of the cluster, else one per CPU).
        cpus_per_worker: CPUs Ray reserves per actor (also its torch threads).
        gpus_per_worker: GPUs per actor; default 1 when the cluster has a GPU for every worker,
            a share of them when it has fewer, 0 without GPUs or for encoders without a model.
        max_restarts: how often a dead actor is restarted, and its shard retried.
        address: Ray cluster address; ``None`` uses the current connection or starts a local,
            loopback-only instance (shut down again by :meth:`close`).
    """

    def __init__(self, encoder: Any, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_restarts: int = 3, address: str | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        files = _encoder_files(encoder)
        ray = require_ray()
        self._started = connect(address)
        try:
            resources = ray.cluster_resources()
            gpus = float(resources.get("GPU", 0))
            has_model = callable(getattr(encoder, "load_model", None))
            if workers is None:
                workers = int(gpus) if gpus >= 1 and has_model else max(1, int(resources.get("CPU", 1) // cpus_per_worker))
            if gpus_per_worker is None:
                gpus_per_worker = min(1.0, gpus / workers) if gpus and has_model else 0.0
            self.workers, self.gpus_per_worker, self.max_restarts = workers, gpus_per_worker, max_restarts
            if workers * cpus_per_worker > resources.get("CPU", 0) or workers * gpus_per_worker > gpus:
                logger.warning("%d workers of %s CPU and %s GPU each need more than the cluster's %s: the "
                               "others wait until resources free up (or nodes join)", workers, cpus_per_worker,
                               gpus_per_worker, {k: resources.get(k, 0) for k in ("CPU", "GPU")})
            remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=max_restarts,
                                max_task_retries=max_restarts)(ShardWorker)
            threads = max(1, int(cpus_per_worker))
            self.actors = [remote.remote(type(encoder), files, threads) for _ in range(workers)]
            logger.info("%d encoder actors (%s CPU, %s GPU each)", workers, cpus_per_worker, gpus_per_worker)
        except BaseException:
            disconnect(self._started)
            raise

    def pids(self, timeout: float | None = None) -> list[int]:
        """The process id of every actor (waits for the actors to start)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors], timeout=timeout)

    def close(self) -> None:
        """Stop the actors (and the local Ray instance this pool started)."""
        import ray

        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)
        self.actors = []
        disconnect(self._started)
        self._started = False

    def __enter__(self) -> "EncoderPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def encode_corpus_distributed(
    encoder: Any,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    shard_size: int = 10_000,
    workers: int | None = None,
    address: str | None = None,
    pool: EncoderPool | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    restart: bool = False,
    on_shard: Callable[[int], None] | None = None,
) -> Path:
    """Encode documents shard by shard on Ray actors into ``out_dir``, resuming a partial run.

    Arguments and result as :func:`lsr.io.shards.encode_corpus_to_shards`, whose directory this
    writes byte for byte (the vectors are the actors' and equal the single-process ones when the
    workers run on the same kind of device), plus:

    Args:
        workers, address: the :class:`EncoderPool` to create (ignored when ``pool`` is given).
        pool: actors to use (already loaded; the caller closes them).
        on_shard: called in this process with each shard number once that shard is recorded.
    """
    from tqdm.auto import tqdm

    require_ray()  # before anything is written
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = prepare_run(out, encoder, doc_ids, texts, shard_size, restart)
    n, n_shards = len(doc_ids), int(progress["n_shards"])
    done = {s["shard"] for s in progress["shards"]}
    todo = collections.deque(i for i in range(n_shards) if i not in done)
    if todo:
        own = pool is None
        pool = pool or EncoderPool(encoder, workers=workers, address=address)
        try:
            with tqdm(total=n, desc="encode", unit="doc", disable=not show_progress,
                      initial=min(n, len(done) * shard_size)) as bar:
                _run(pool, out, texts, shard_size, todo, progress, batch_size, on_shard, bar)
        finally:
            if own:
                pool.close()
    if not progress["complete"]:  # e.g. an empty corpus
        progress["complete"] = len(progress["shards"]) == n_shards
        _write_json_atomic(out / PROGRESS, progress)
    return out


def _run(pool: EncoderPool, out: Path, texts: Sequence[str], shard_size: int, todo: collections.deque,
         progress: dict[str, Any], batch_size: int | None, on_shard: Callable[[int], None] | None, bar: Any) -> None:
    """Keep every actor busy with shards from ``todo``; record each as it lands."""
    import ray
    from ray.exceptions import RayActorError

    n, n_shards, vocab_size = int(progress["n_docs"]), int(progress["n_shards"]), int(progress["vocab_size"])
    inflight: dict[Any, tuple[int, int]] = {}

    def submit(actor: int) -> None:
        if todo:
            i = todo.popleft()
            lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
            ref = pool.actors[actor].encode_shard.remote(str(out), i, lo, list(texts[lo:hi]), vocab_size, batch_size)
            inflight[ref] = (i, actor)

    for _ in range(_QUEUED_PER_ACTOR):
        for actor in range(len(pool.actors)):
            submit(actor)
    try:
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            i, actor = inflight.pop(ref)
            try:
                entry = ray.get(ref)
            except RayActorError as exc:
                raise RuntimeError(f"{out}: shard {i}: its worker died {pool.max_restarts + 1} times "
                                   f"(max_restarts={pool.max_restarts}); finished shards are kept, rerun to "
                                   f"resume ({exc})") from exc
            progress["shards"].append(entry)
            progress["shards"].sort(key=lambda s: s["shard"])
            progress["complete"] = len(progress["shards"]) == n_shards
            _write_json_atomic(out / PROGRESS, progress)
            bar.update(entry["stop"] - entry["start"])
            if on_shard is not None:
                on_shard(i)
            submit(actor)
    finally:
        for ref in inflight:  # an error or an interrupt: drop the queued shards
            ray.cancel(ref)
