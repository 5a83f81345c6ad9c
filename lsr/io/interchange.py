"""Sparse vectors in the peers' JSONL formats: Anserini/pyserini ``JsonVectorCollection`` and Seismic.

Both formats hold one document per line with a ``vector`` object mapping token strings to weights:

- **JsonVectorCollection** (Anserini ``-collection JsonVectorCollection -impact -pretokenized``):
  ``{"id": "d1", "contents": "", "vector": {"heart": 232, "disease": 173}}`` with *integer*
  impacts ``round(weight * scale)`` (lsr's default scale is 100, as pyserini's SPLADE recipes
  use). The scale is recorded in the sidecar ``export.json`` next to the collection directory.
- **Seismic**: ``{"id": "d1", "content": "", "vector": {"heart": 2.322, "disease": 1.732}}``
  with float weights.

Exports from ``lsr encode`` are laid out as ``OUT/collection/part-00000.jsonl`` (point Anserini's
``-input`` at ``OUT/collection``) plus ``OUT/export.json``.

>>> import io, numpy as np
>>> from lsr.types import SparseBatch
>>> b = SparseBatch.from_rows([([0, 2], [1.234, 0.5])], vocab=["heart", "##s", "disease"])
>>> f = io.StringIO(); n = write_vector_jsonl(f, ["d1"], b, fmt="jsonvector", scale=100)
>>> f.getvalue()
'{"id": "d1", "contents": "", "vector": {"heart": 123, "disease": 50}}\\n'
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np

from lsr.io.readers import _lines
from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["write_vector_jsonl", "read_vector_jsonl", "export_collection", "read_collection", "EXPORT_SIDECAR",
           "FORMATS"]

FORMATS = ("jsonvector", "seismic")
EXPORT_SIDECAR = "export.json"
COLLECTION_DIR = "collection"


def write_vector_jsonl(out: str | os.PathLike | IO[str], doc_ids: Sequence[str], vectors: SparseBatch,
                       fmt: str = "jsonvector", scale: float = 100.0, vocab: Sequence[str] | None = None) -> int:
    """Write one JSON line per document; returns the number of lines.

    ``jsonvector`` writes integer impacts ``round(w * scale)`` (terms that round to 0 are
    dropped); ``seismic`` writes float weights.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    vocab = vocab if vocab is not None else vectors.vocab
    if vocab is None:
        raise ValueError("the vectors carry no vocabulary: pass vocab= to name the tokens")
    if len(doc_ids) != len(vectors):
        raise ValueError(f"{len(doc_ids)} ids for {len(vectors)} vectors")
    if fmt == "jsonvector" and not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", encoding="utf-8") as f:
            return write_vector_jsonl(f, doc_ids, vectors, fmt, scale, vocab)
    text_key = "contents" if fmt == "jsonvector" else "content"
    for i, doc_id in enumerate(doc_ids):
        ids, w = vectors.row(i)
        if fmt == "jsonvector":
            q = np.rint(w.astype(np.float64) * scale).astype(np.int64)
            vec = {vocab[int(t)]: int(x) for t, x in zip(ids, q) if x != 0}
        else:
            vec = {vocab[int(t)]: float(x) for t, x in zip(ids, w)}
        out.write(json.dumps({"id": str(doc_id), text_key: "", "vector": vec}, ensure_ascii=False) + "\n")
    return len(doc_ids)


def export_collection(out_dir: str | os.PathLike, doc_ids: Sequence[str], vectors: SparseBatch,
                      fmt: str = "jsonvector", scale: float = 100.0, encoder: dict[str, Any] | None = None,
                      lines_per_file: int = 500_000) -> Path:
    """Write ``out_dir/collection/part-NNNNN.jsonl`` files and the ``out_dir/export.json`` sidecar."""
    out = Path(out_dir)
    coll = out / COLLECTION_DIR
    coll.mkdir(parents=True, exist_ok=True)
    for old in coll.glob("part-*.jsonl"):
        old.unlink()
    for part, lo in enumerate(range(0, max(len(doc_ids), 1), lines_per_file)):
        hi = min(len(doc_ids), lo + lines_per_file)
        write_vector_jsonl(coll / f"part-{part:05d}.jsonl", doc_ids[lo:hi], vectors[lo:hi], fmt, scale)
    sidecar = {"format": fmt, "scale": scale if fmt == "jsonvector" else None, "n_docs": len(doc_ids),
               "collection": COLLECTION_DIR, "encoder": encoder,
               "note": ("integer impacts = round(weight * scale); divide by scale for the float weights"
                        if fmt == "jsonvector" else "float weights")}
    (out / EXPORT_SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def read_vector_jsonl(paths: str | os.PathLike | Sequence[str | os.PathLike], vocab: Sequence[str] | None = None,
                      scale: float | None = None) -> tuple[list[str], SparseBatch]:
    """Read JsonVectorCollection or Seismic JSONL file(s) into ``(doc_ids, SparseBatch)``.

    Tokens map to ids through ``vocab`` (the query encoder's vocabulary; unknown tokens are
    dropped with a warning, since no query can match them); without ``vocab`` the vocabulary is
    built from the files in first-seen order. Weights are divided by ``scale`` when given
    (to undo JsonVectorCollection's integer quantisation). Bad lines raise DataFormatError
    naming file, line and field.
    """
    from lsr.errors import DataFormatError

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    grow = vocab is None
    vocab_list: list[str] = [] if grow else list(vocab)
    ids_of = {t: i for i, t in enumerate(vocab_list)}
    doc_ids: list[str] = []
    indptr = [0]
    cols: list[int] = []
    vals: list[float] = []
    unknown: dict[str, int] = {}
    for p in map(Path, paths):
        for n, line in _lines(p):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(p, n, f"invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(p, n, "expected a JSON object")
            doc_id = obj.get("id", obj.get("_id", obj.get("docid")))
            if doc_id is None:
                raise DataFormatError(p, n, "missing document id", "id")
            vec = obj.get("vector")
            if not isinstance(vec, dict):
                raise DataFormatError(p, n, "expected an object mapping token -> weight", "vector")
            for token, w in vec.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
                    raise DataFormatError(p, n, f"weight of {token!r} must be a finite number, got {w!r}", "vector")
                j = ids_of.get(token)
                if j is None:
                    if not grow:
                        unknown[token] = unknown.get(token, 0) + 1
                        continue
                    j = ids_of[token] = len(vocab_list)
                    vocab_list.append(token)
                cols.append(j)
                vals.append(float(w))
            doc_ids.append(str(doc_id))
            indptr.append(len(cols))
    if unknown:
        logger.warning("%d distinct tokens (%d postings) are not in the vocabulary and were dropped, e.g. %s",
                       len(unknown), sum(unknown.values()), sorted(unknown)[:5])
    data = np.asarray(vals, dtype=np.float64)
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        data = data / scale
    import scipy.sparse as sp

    m = sp.csr_matrix((data.astype(np.float32), np.asarray(cols, np.int64), np.asarray(indptr, np.int64)),
                      shape=(len(doc_ids), len(vocab_list)))
    return doc_ids, SparseBatch.from_scipy(m, vocab=vocab_list)


def read_collection(path: str | os.PathLike, vocab: Sequence[str] | None = None) -> tuple[list[str], SparseBatch]:
    """Read an export directory (``export.json`` + ``collection/``), a directory of JSONL files, or one file.

    The sidecar's scale (JsonVectorCollection) is undone, so weights come back as floats.
    """
    path = Path(path)
    scale = None
    if path.is_dir():
        sidecar = path / EXPORT_SIDECAR
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            scale = meta.get("scale")
            path = path / meta.get("collection", COLLECTION_DIR)
        files = sorted([*path.glob("*.jsonl"), *path.glob("*.jsonl.gz"), *path.glob("*.json")])
        if not files:
            raise FileNotFoundError(f"{path}: no .jsonl files with sparse vectors")
    else:
        files = [path]
        sidecar = path.parent.parent / EXPORT_SIDECAR
        if path.parent.name == COLLECTION_DIR and sidecar.is_file():
            scale = json.loads(sidecar.read_text()).get("scale")
    return read_vector_jsonl(files, vocab=vocab, scale=scale)


def looks_like_vector_jsonl(path: str | os.PathLike) -> bool:
    """Whether a file's first record has a ``vector`` object (JsonVectorCollection / Seismic)."""
    path = Path(path)
    try:
        for _, line in _lines(path):
            obj = json.loads(line)
            return isinstance(obj, dict) and isinstance(obj.get("vector"), dict)
    except (OSError, ValueError):  # DataFormatError (bad UTF-8 or gzip) and JSONDecodeError are ValueErrors
        return False
    return False
