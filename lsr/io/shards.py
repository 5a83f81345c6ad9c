"""Resumable corpus encoding: sparse document vectors streamed to disk in numbered shards.

Directory layout (all fixed names, no pickle)::

    progress.json                 format, encoder config, corpus fingerprint, finished shards
    doc_ids.parquet               all document ids, in corpus order (column ``id``)
    vocab.parquet                 the encoder vocabulary in id order (column ``id``)
    shard-00000.indptr.npy        CSR rows of documents [0, shard_size)       int64
    shard-00000.indices.npy                                                   int32
    shard-00000.data.npy                                                      float32
    shard-00001.*                 ...

``progress.json`` is replaced atomically after every finished shard (its arrays are written and
renamed into place first, and their sizes and SHA-256 recorded), so a run killed at any point
resumes at the first unfinished shard; one killed before its first ``progress.json`` (while
writing the ids) has finished nothing and simply starts again. Each shard is encoded on its own, so a resumed run
produces exactly the vectors of an uninterrupted one.

>>> enc = SpladeEncoder("path/to/splade")                                   # doctest: +SKIP
>>> encode_corpus_to_shards(enc, ids, texts, "out/", shard_size=10_000)     # doctest: +SKIP
>>> doc_ids, vectors = load_shards("out/")                                  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lsr.errors import IndexFormatError
from lsr.io.manifest import _sha256, load_ids, save_ids
from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["encode_corpus_to_shards", "prepare_run", "load_shards", "read_progress", "is_shards_dir", "corpus_fingerprint",
           "SHARDS_FORMAT"]

SHARDS_FORMAT = "lsr.encoded-shards"
SHARDS_VERSION = 1
PROGRESS = "progress.json"
_PARTS = (("indptr", np.int64), ("indices", np.int32), ("data", np.float32))
# Every name encode_corpus_to_shards writes, temporary ones included: a directory holding only
# these but no progress.json is a run killed before its first progress file.
_OWN_FILE = re.compile(r"(doc_ids|vocab)\.parquet|\.?progress\.json(\.tmp)?|"
                       r"\.?shard-\d{5,}\.(indptr|indices|data)\.npy(\.tmp)?")


def corpus_fingerprint(doc_ids: Sequence[str], texts: Sequence[str]) -> str:
    """SHA-256 over ids and texts: a resumed run must see the same corpus."""
    h = hashlib.sha256()
    for i, t in zip(doc_ids, texts):
        h.update(str(i).encode("utf-8", "surrogatepass") + b"\x00")
        h.update(str(t).encode("utf-8", "surrogatepass") + b"\x01")
    return h.hexdigest()


def is_shards_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / PROGRESS).is_file()


def read_progress(path: str | os.PathLike) -> dict[str, Any]:
    """The progress manifest of a shards directory (IndexFormatError if absent or foreign)."""
    file = Path(path) / PROGRESS
    try:
        progress = json.loads(file.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: not an encoded-shards directory (no {PROGRESS})") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{file}: corrupt progress manifest ({exc})") from exc
    if not isinstance(progress, dict) or progress.get("format") != SHARDS_FORMAT:
        raise IndexFormatError(f"{file}: not an {SHARDS_FORMAT!r} manifest")
    if progress.get("format_version") != SHARDS_VERSION:
        raise IndexFormatError(f"{file}: format version {progress.get('format_version')} is not supported "
                               f"(this lsr reads version {SHARDS_VERSION})")
    return progress


def _write_json_atomic(file: Path, obj: dict[str, Any]) -> None:
    tmp = file.with_name(f".{file.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)


def _unstarted_run(out: Path) -> bool:
    """Whether ``out`` holds only files of a run that never wrote ``progress.json`` (killed while
    writing the document ids or the vocabulary): nothing in it is worth keeping."""
    return not is_shards_dir(out) and all(_OWN_FILE.fullmatch(p.name) and p.is_file() for p in out.iterdir())


def _shard_name(i: int, part: str) -> str:
    return f"shard-{i:05d}.{part}.npy"


def _write_shard(out: Path, i: int, batch: SparseBatch) -> dict[str, Any]:
    files = {}
    for part, dtype in _PARTS:
        name = _shard_name(i, part)
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(getattr(batch, part), dtype=dtype), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / name)
        files[name] = {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
    return files


def encode_corpus_to_shards(
    encoder: Any,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    shard_size: int = 10_000,
    batch_size: int | None = None,
    show_progress: bool = False,
    restart: bool = False,
    on_shard: Callable[[int], None] | None = None,
) -> Path:
    """Encode documents shard by shard into ``out_dir``, resuming a previous partial run.

    Args:
        encoder: any sparse encoder (``encode_documents``, ``config``, ``vocab``/``vocab_size``).
        doc_ids, texts: the corpus.
        out_dir: directory (created); a partial run there with the same corpus and encoder resumes,
            and one that never wrote its progress file (only this function's files) starts again.
        shard_size: documents per shard.
        restart: discard an existing partial run instead of refusing a mismatching one.
        on_shard: called with the shard number after each shard is safely on disk (tests use it
            to interrupt a run).

    Returns:
        ``out_dir`` as a Path.
    """
    from tqdm.auto import tqdm

    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = prepare_run(out, encoder, doc_ids, texts, shard_size, restart)
    n, n_shards = len(doc_ids), progress["n_shards"]
    done = {s["shard"] for s in progress["shards"]}
    with tqdm(total=n, desc="encode", unit="doc", disable=not show_progress,
              initial=min(n, len(done) * shard_size)) as bar:
        for i in range(n_shards):
            if i in done:
                continue
            lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
            kwargs = {"batch_size": batch_size} if batch_size else {}
            batch = encoder.encode_documents(list(texts[lo:hi]), **kwargs)
            if batch.vocab_size != progress["vocab_size"]:
                raise ValueError(f"encoder produced vocab size {batch.vocab_size}, expected {progress['vocab_size']}")
            files = _write_shard(out, i, batch)
            progress["shards"].append({"shard": i, "start": lo, "stop": hi, "nnz": batch.nnz, "files": files})
            progress["shards"].sort(key=lambda s: s["shard"])
            progress["complete"] = len(progress["shards"]) == n_shards
            _write_json_atomic(out / PROGRESS, progress)
            bar.update(hi - lo)
            if on_shard is not None:
                on_shard(i)
    if not progress["complete"]:  # e.g. an empty corpus
        progress["complete"] = len(progress["shards"]) == n_shards
        _write_json_atomic(out / PROGRESS, progress)
    return out


def load_shards(path: str | os.PathLike, verify: bool = True) -> tuple[list[str], SparseBatch]:
    """``(doc_ids, vectors)`` of a finished shards directory (checksums checked when ``verify``)."""
    path = Path(path)
    progress = read_progress(path)
    if not progress.get("complete"):
        raise IndexFormatError(f"{path}: encoding is unfinished ({len(progress.get('shards', []))} of "
                               f"{progress.get('n_shards')} shards); rerun `lsr encode` to resume it")
    n = int(progress["n_docs"])
    doc_ids = [str(x) for x in load_ids(path, "doc_ids.parquet", n)]
    vocab_size = int(progress["vocab_size"])
    vocab = None
    if progress.get("has_vocab"):
        vocab = [str(x) for x in load_ids(path, "vocab.parquet", vocab_size)]
    batches = []
    for s in progress["shards"]:
        parts = {}
        for part, dtype in _PARTS:
            name = _shard_name(s["shard"], part)
            file = path / name
            meta = s["files"][name]
            if not file.is_file() or file.stat().st_size != meta["bytes"]:
                raise IndexFormatError(f"{file}: missing or truncated")
            if verify and _sha256(file) != meta["sha256"]:
                raise IndexFormatError(f"{file}: checksum mismatch (file was edited or corrupted)")
            arr = np.load(file, allow_pickle=False)
            if arr.dtype != dtype:
                raise IndexFormatError(f"{file}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
            parts[part] = arr
        if parts["indptr"].size != s["stop"] - s["start"] + 1:
            raise IndexFormatError(f"{path}: shard {s['shard']} has {parts['indptr'].size - 1} rows, "
                                   f"expected {s['stop'] - s['start']}")
        try:
            batches.append(SparseBatch(parts["indptr"], parts["indices"], parts["data"], vocab_size, vocab))
        except ValueError as exc:
            raise IndexFormatError(f"{path}: shard {s['shard']}: {exc}") from exc
    if not batches:
        return doc_ids, SparseBatch(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                                    vocab_size, vocab)
    return doc_ids, SparseBatch.concat(batches)


def prepare_run(out: Path, encoder: Any, doc_ids: Sequence[str], texts: Sequence[str], shard_size: int,
                restart: bool) -> dict[str, Any]:
    """The progress of a shards run in ``out`` (an existing directory): resumed when it holds one
    with the same encoder, corpus and shard size (another is refused unless ``restart``), or
    started: ids, vocabulary and an empty progress file written (what :func:`encode_corpus_to_shards`
    and ``lsr.distributed`` both start from)."""
    config = encoder.config()
    fingerprint = corpus_fingerprint(doc_ids, texts)
    n = len(doc_ids)
    n_shards = (n + shard_size - 1) // shard_size
    if is_shards_dir(out) and not restart:
        progress = read_progress(out)
        for key, want in (("encoder", config), ("fingerprint", fingerprint), ("shard_size", shard_size)):
            if progress.get(key) != want:
                raise ValueError(f"{out}: holds a run with another {key} ({progress.get(key)!r} != {want!r}); "
                                 "use another directory or restart=True (--restart) to discard it")
        logger.info("%s: resuming after %d of %d shards", out, len(progress["shards"]), n_shards)
        return progress
    if not is_shards_dir(out) and any(out.iterdir()):
        if not _unstarted_run(out):
            raise ValueError(f"{out}: directory is not empty and holds no encoded shards")
        logger.info("%s: a run stopped before its first progress file; starting it again", out)
    # A discarded or never-started run: the old progress file goes first, so that a kill in
    # the middle of this leaves an unstarted run (see above), never a manifest without shards.
    (out / PROGRESS).unlink(missing_ok=True)
    for f in out.iterdir():
        if _OWN_FILE.fullmatch(f.name) and f.is_file():
            f.unlink()
    save_ids(out, "doc_ids.parquet", list(doc_ids))
    vocab = getattr(encoder, "vocab", None)
    if vocab is not None:
        save_ids(out, "vocab.parquet", list(vocab))
    progress = {"format": SHARDS_FORMAT, "format_version": SHARDS_VERSION, "encoder": config,
                "fingerprint": fingerprint, "shard_size": shard_size, "n_docs": n, "n_shards": n_shards,
                "vocab_size": int(getattr(encoder, "vocab_size", 0) or len(vocab or [])),
                "has_vocab": vocab is not None, "complete": False, "shards": []}
    _write_json_atomic(out / PROGRESS, progress)
    return progress
