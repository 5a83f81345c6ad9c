"""Build an :class:`~lsr.index.inverted.InvertedIndex` from document shards larger than memory.

Each shard (a block of consecutive documents) is inverted on its own into a term-major run
file; the runs are then merged by term straight into the memory-mapped posting arrays of the
final index directory (the runs hold consecutive document ranges, so merging a term's lists is
concatenating them in shard order). Peak memory is about one shard, vocabulary-sized
arrays and the compressed postings (about 1.7 bytes per posting); the arrays written are identical to those of :meth:`InvertedIndex.from_csr` on the
concatenated matrix.

>>> import numpy as np, scipy.sparse as sp, tempfile, os
>>> a = sp.csr_matrix(np.array([[1.0, 0, 2.0]], dtype=np.float32))
>>> b = sp.csr_matrix(np.array([[0, 3.0, 1.0]], dtype=np.float32))
>>> index = build_index([a, b], os.path.join(tempfile.mkdtemp(), "ix"), doc_ids=["d1", "d2"])
>>> index.search(sp.csr_matrix(np.array([[0, 0, 1.0]], dtype=np.float32)), k=2)[0].tolist()
[[0, 1]]
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np

from lsr.index._build_kernels import _scatter
from lsr.io.manifest import atomic_directory, load_ids
from lsr.index.inverted import InvertedIndex, Postings, check_doc_ids, coarse_codes, fine_codes, quantization_for
from lsr.types import SparseBatch

logger = logging.getLogger(__name__)

__all__ = ["build_index", "shards_from_directory"]

Shard = Union[Any, Callable[[], Any]]  # a scipy matrix / SparseBatch, or a function returning one


def _clean(shard: Shard, vocab_size: int | None, i: int):
    """The shard as a cleaned float32 CSR matrix (duplicates summed, zeros dropped, sorted)."""
    import scipy.sparse as sp

    m = shard() if callable(shard) else shard
    if isinstance(m, SparseBatch):
        m = m.to_scipy()
    if not sp.issparse(m):
        raise TypeError(f"shard {i}: expected a scipy sparse matrix or SparseBatch, got {type(m).__name__}")
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    if vocab_size is not None and m.shape[1] != vocab_size:
        raise ValueError(f"shard {i}: vocabulary size {m.shape[1]}, expected {vocab_size} (shard 0's)")
    if m.nnz and not np.all(np.isfinite(m.data)):
        raise ValueError(f"shard {i}: document weights must be finite (found NaN or inf)")
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    return m


def shards_from_directory(path: str | os.PathLike) -> tuple[list[str], list[Callable[[], SparseBatch]]]:
    """``(doc_ids, shard loaders)`` of an ``lsr encode`` shards directory; each loader reads one
    shard memory-mapped, so nothing is loaded until the build asks for it."""
    from lsr.io.shards import _PARTS, _shard_name, read_progress

    path = Path(path)
    progress = read_progress(path)
    if not progress.get("complete"):
        from lsr.errors import IndexFormatError

        raise IndexFormatError(f"{path}: encoding is unfinished; rerun `lsr encode` to resume it")
    doc_ids = [str(x) for x in load_ids(path, "doc_ids.parquet", int(progress["n_docs"]))]
    vocab_size = int(progress["vocab_size"])

    def loader(s: int) -> Callable[[], SparseBatch]:
        def load() -> SparseBatch:
            parts = [np.load(path / _shard_name(s, part), mmap_mode="r", allow_pickle=False) for part, _ in _PARTS]
            return SparseBatch(*(np.asarray(p, dtype) for p, (_, dtype) in zip(parts, _PARTS)), vocab_size)

        return load

    return doc_ids, [loader(int(s["shard"])) for s in progress["shards"]]


def build_index(
    shards: Iterable[Shard],
    path: str | os.PathLike,
    doc_ids: Sequence[str] | None = None,
    quantize: int | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = True,
    show_progress: bool = False,
    forward: bool = False,
) -> InvertedIndex:
    """Write the index of the row-wise concatenation of ``shards`` to directory ``path``.

    Args:
        shards: document blocks in order: scipy sparse matrices / :class:`SparseBatch` es, or
            zero-argument callables returning one (loaded lazily, twice: a first pass reads the
            sizes and the largest weight, the second inverts). A plain iterator is consumed
            into a list, so pass callables when the shards do not fit in memory together.
        path: output directory (written atomically, see docs/FORMAT.md).
        doc_ids / quantize / metadata / forward: as :meth:`InvertedIndex.from_csr`.

    Returns:
        The index, opened memory-mapped from ``path``.
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    if quantize not in (None, 8):
        raise ValueError(f"quantize must be None or 8, got {quantize!r}")
    shards = list(shards)
    if not shards:
        raise ValueError("no shards to index")
    # ---- pass 1: sizes and the largest weight (quantisation scale)
    vocab_size, rows, nnz, wmax, wmin = None, [], 0, 0.0, np.inf
    for i, s in enumerate(tqdm(shards, desc="scan shards", disable=not show_progress)):
        m = _clean(s, vocab_size, i)
        vocab_size = m.shape[1]
        rows.append(m.shape[0])
        nnz += m.nnz
        if m.nnz:
            wmax, wmin = max(wmax, float(m.data.max())), min(wmin, float(m.data.min()))
        del m
    n_docs = int(sum(rows))
    doc_ids = check_doc_ids(doc_ids, n_docs)
    quant = None
    if quantize:
        if nnz and wmin <= 0.0:
            raise ValueError("quantize=8 needs positive document weights; use quantize=None")
        quant = quantization_for(wmax if nnz else 1.0)
    tdtype = np.uint16 if vocab_size <= 65536 else np.int32
    fdtype, pdtype = (np.uint16, np.uint8) if quant else (np.float32, np.float32)
    path = Path(path)
    with atomic_directory(path, InvertedIndex.FORMAT, overwrite=overwrite) as tmp:
        runs = tmp / "runs"
        runs.mkdir()
        if forward:
            fwd_indptr = open_memmap(tmp / "forward_indptr.npy", "w+", np.int64, (n_docs + 1,))
            fwd_terms = open_memmap(tmp / "forward_terms.npy", "w+", tdtype, (nnz,))
            fwd_w = open_memmap(tmp / "forward_weights.npy", "w+", fdtype, (nnz,))
            fwd_indptr[0] = 0
        counts = np.zeros((len(shards), vocab_size), np.int64)
        # ---- pass 2: forward arrays in place; one term-major run per shard
        d0, p0 = 0, 0
        for i, s in enumerate(tqdm(shards, desc="invert shards", disable=not show_progress)):
            m = _clean(s, vocab_size, i)
            if m.shape[0] != rows[i]:
                raise ValueError(f"shard {i}: {m.shape[0]} rows now, {rows[i]} in the first pass")
            w = fine_codes(m.data, quant) if quant else m.data
            if forward:
                fwd_indptr[d0 + 1:d0 + m.shape[0] + 1] = p0 + m.indptr[1:]
                fwd_terms[p0:p0 + m.nnz] = m.indices
                fwd_w[p0:p0 + m.nnz] = w
            order = np.argsort(m.indices, kind="stable")
            counts[i] = np.bincount(m.indices, minlength=vocab_size)
            docs = np.repeat(np.arange(d0, d0 + m.shape[0], dtype=np.int32), np.diff(m.indptr))[order]
            np.save(runs / f"run-{i:05d}.docs.npy", docs)
            np.save(runs / f"run-{i:05d}.weights.npy", coarse_codes(w[order]) if quant else w[order])
            d0, p0 = d0 + m.shape[0], p0 + m.nnz
            del m, w, order, docs
        # ---- merge: runs are consecutive document ranges, so a term's list is their concatenation
        offsets = np.zeros(vocab_size + 1, np.int64)
        np.cumsum(counts.sum(axis=0), out=offsets[1:])
        post_docs = open_memmap(runs / "postings_docs.npy", "w+", np.int32, (nnz,))
        post_w = open_memmap(runs / "postings_weights.npy", "w+", pdtype, (nnz,))
        start = offsets[:-1].copy()
        for i in tqdm(range(len(shards)), desc="merge runs", disable=not show_progress):
            rd = np.load(runs / f"run-{i:05d}.docs.npy", mmap_mode="r")
            rw = np.load(runs / f"run-{i:05d}.weights.npy", mmap_mode="r")
            _scatter(start, counts[i], rd, rw, post_docs, post_w)
            del rd, rw
        # ---- compress the merged lists (read sequentially from the memory-mapped runs)
        postings = Postings.encode(offsets, post_docs, post_w)
        del post_docs, post_w
        shutil.rmtree(runs)
        fwd = None
        if forward:
            for arr in (fwd_indptr, fwd_terms, fwd_w):
                arr.flush()
            fwd = (fwd_indptr, fwd_terms, fwd_w)
        index = InvertedIndex(postings, n_docs, doc_ids, metadata, forward=fwd, quantization=quant)
        index._write(tmp, written=("forward_indptr", "forward_terms", "forward_weights"))
        del index, fwd
        if forward:
            del fwd_indptr, fwd_terms, fwd_w
    logger.info("built %s: %d documents, %d postings from %d shards", path, n_docs, nnz, len(shards))
    return InvertedIndex.load(path, verify=False)
