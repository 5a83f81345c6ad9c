"""MUVERA fixed-dimensional encodings (FDEs) and the FDE index.

An FDE turns a set of vectors into one vector whose inner product approximates the MaxSim
(Chamfer) score (Dhulipala et al. 2024, "MUVERA: Multi-Vector Retrieval via Fixed Dimensional
Encodings"). This follows Google's reference implementation
(graph-mining ``sketching/point_cloud/fixed_dimensional_encoding.cc``):

* for each of ``reps`` repetitions (seed ``seed + rep``): ``k_sim`` Gaussian hyperplanes
  (SimHash) split space into ``2**k_sim`` partitions; a vector's partition label is its sign
  bits read as a Gray code (``AppendToGrayCode``);
* each vector is projected by an AMS sketch (every input coordinate goes to one random output
  coordinate with a random sign) to ``d_proj`` dimensions, or kept as is when ``d_proj`` is
  ``None`` or equals the input dimension (identity projection);
* queries sum the projected vectors of each partition; documents average them, and an empty
  document partition takes the projected vector of the document's point whose SimHash bits are
  nearest in Hamming distance to the partition (first such point on ties);
* the ``reps * 2**k_sim * d_proj`` block vector (layout ``[rep][partition][coordinate]``) is
  optionally reduced by a Count-sketch (seed ``seed``) to ``final_dim``.

Random matrices come from NumPy's generator seeded with the same seeds, so the encoding is
structurally identical to the reference but not bit-identical to its C++ ``mt19937`` draws.

>>> import numpy as np
>>> from lsr.types import MultiVectors
>>> enc = FDEEncoder(FDEConfig(dim=8, k_sim=2, d_proj=None, reps=3))
>>> rng = np.random.default_rng(0)
>>> q, d = rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(1, 8)).astype(np.float32)
>>> fq = enc.encode_queries(MultiVectors.from_list([q]))
>>> fd = enc.encode_documents(MultiVectors.from_list([d]))
>>> bool(np.isclose(fq @ fd.T, 3 * (q @ d.T), rtol=1e-5))   # one vector each: reps x dot product
True
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.errors import IndexFormatError
from lsr.io.manifest import (
    atomic_directory,
    field_dict,
    field_int,
    load_ids,
    load_multivectors,
    positive_int,
    read_manifest,
    resolve_dir,
    save_ids,
    save_multivectors,
    write_manifest,
)
from lsr.index._fde_kernels import _ams_project, _scatter_sum
from lsr.index._heap_kernels import PARALLEL_LOCK
from lsr.index._allowed import check_allowed
from lsr.index.maxsim import _top_k, maxsim_rerank
from lsr.types import MultiVectors, SearchResults

logger = logging.getLogger(__name__)

__all__ = ["FDEConfig", "FDEEncoder", "FDEIndex", "gray_partition_index", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES = 50  # FDE candidates re-ranked by exact MaxSim (docs/dense_and_muvera.md)
_ENCODE_BATCH = 512  # multi-vector sets encoded together


@dataclass(frozen=True)
class FDEConfig:
    """FDE parameters (names follow the paper; reference proto names in brackets).

    Attributes:
        dim: input vector dimension [dimension].
        k_sim: SimHash hyperplanes per repetition, ``2**k_sim`` partitions [num_simhash_projections].
        d_proj: AMS-sketch projection dimension, ``None`` = identity [projection_dimension].
        reps: repetitions [num_repetitions].
        final_dim: Count-sketch output dimension, ``None`` = no final projection
            [final_projection_dimension].
        fill_empty_partitions: documents fill empty partitions from the nearest point.
        seed: base random seed [seed].

    Defaults (``2**3 * 128 * 10 = 10240`` dimensions), the same for every dataset, were tuned on
    scifact with MiniLM token vectors: recall 0.906 of the exact-MaxSim top-10 within the FDE
    top-100 (mean 0.901 over eight seeds; 0.80 on nfcorpus, whose 5-vector queries no
    ~10k-dimension setting brings above 0.83; ``scripts/bench_muvera.py``,
    docs/dense_and_muvera.md has the grids).
    """

    dim: int
    k_sim: int = 3
    d_proj: int | None = 128
    reps: int = 10
    final_dim: int | None = None
    fill_empty_partitions: bool = True
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("dim", "k_sim", "reps", "seed", "d_proj", "final_dim"):
            value = getattr(self, name)
            if not (value is None and name in ("d_proj", "final_dim")) and (
                    isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise TypeError(f"FDEConfig.{name} must be an integer, got {value!r}")
        if not isinstance(self.fill_empty_partitions, (bool, np.bool_)):
            raise TypeError(f"FDEConfig.fill_empty_partitions must be a bool, got {self.fill_empty_partitions!r}")
        if self.dim < 1 or self.reps < 1:
            raise ValueError(f"dim and reps must be positive, got dim={self.dim}, reps={self.reps}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not 0 <= self.k_sim <= 30:
            raise ValueError(f"k_sim must be in [0, 30], got {self.k_sim}")
        if self.d_proj is not None and self.d_proj < 1:
            raise ValueError(f"d_proj must be positive or None, got {self.d_proj}")
        if self.final_dim is not None and self.final_dim < 1:
            raise ValueError(f"final_dim must be positive or None, got {self.final_dim}")

    @property
    def identity(self) -> bool:
        return self.d_proj is None or self.d_proj == self.dim

    @property
    def projection_dim(self) -> int:
        return self.dim if self.identity else int(self.d_proj)

    @property
    def partitions(self) -> int:
        return 1 << self.k_sim

    @property
    def block_dim(self) -> int:
        """Dimension before the final projection: ``reps * 2**k_sim * d_proj``."""
        return self.reps * self.partitions * self.projection_dim

    @property
    def output_dim(self) -> int:
        return self.final_dim or self.block_dim

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output_dim": self.output_dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FDEConfig":
        fields = ("dim", "k_sim", "d_proj", "reps", "final_dim", "fill_empty_partitions", "seed")
        return cls(**{k: d[k] for k in fields if k in d})


def gray_partition_index(bits: np.ndarray) -> np.ndarray:
    """Partition labels of SimHash sign bits ``(n, k)`` as the reference's ``AppendToGrayCode``.

    Appending bit ``b`` to code ``g`` gives ``(g << 1) + (b ^ (g & 1))``, so label bit ``i``
    (from the most significant) is the XOR of sign bits ``0..i``.
    """
    bits = np.asarray(bits, dtype=np.int64)
    prefix = np.bitwise_xor.accumulate(bits, axis=1) if bits.shape[1] else bits
    weights = (1 << np.arange(bits.shape[1] - 1, -1, -1, dtype=np.int64))
    return prefix @ weights


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.int64)
    while np.any(x):
        count += (x & np.uint64(1)).astype(np.int64)
        x = x >> np.uint64(1)
    return count


class FDEEncoder:
    """Computes FDEs of :class:`MultiVectors` for a fixed :class:`FDEConfig` (deterministic)."""

    def __init__(self, config: FDEConfig) -> None:
        self.config = config
        c = config
        self.simhash: list[np.ndarray] = []   # (dim, k_sim) Gaussian per repetition
        self.ams: list[np.ndarray | None] = []  # (dim, d_proj) one +-1 per row, None = identity
        for rep in range(c.reps):
            rng = np.random.default_rng([c.seed + rep, 0])
            self.simhash.append(rng.standard_normal((c.dim, c.k_sim)).astype(np.float32))
            if c.identity:
                self.ams.append(None)
            else:
                rng = np.random.default_rng([c.seed + rep, 1])
                m = np.zeros((c.dim, c.projection_dim), dtype=np.float32)
                m[np.arange(c.dim), rng.integers(0, c.projection_dim, c.dim)] = rng.choice([-1.0, 1.0], c.dim)
                self.ams.append(m)
        # the same AMS matrices as (target coordinate, sign) per input coordinate: O(tokens * dim) to apply
        self._ams_sparse = [None if m is None else (np.argmax(m != 0, axis=1).astype(np.int64),
                                                    m[np.arange(c.dim), np.argmax(m != 0, axis=1)].copy())
                            for m in self.ams]
        # every repetition at once for the query path: (dim, reps * k_sim) hyperplanes and the AMS
        # sketches as (reps, dim) target coordinates and signs (identity: coordinate i, sign +1)
        self._simhash_all = np.ascontiguousarray(np.concatenate(self.simhash, axis=1))
        self._targets = np.stack([np.arange(c.dim) if a is None else a[0] for a in self._ams_sparse]).astype(np.int64)
        self._signs = np.stack([np.ones(c.dim, np.float32) if a is None else a[1]
                                for a in self._ams_sparse]).astype(np.float32)
        self.count_sketch: tuple[np.ndarray, np.ndarray] | None = None
        if c.final_dim is not None:
            rng = np.random.default_rng([c.seed, 2])
            self.count_sketch = (rng.integers(0, c.final_dim, c.block_dim),
                                 rng.choice([-1.0, 1.0], c.block_dim).astype(np.float32))

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def encode_queries(self, mv: MultiVectors, show_progress: bool = False) -> np.ndarray:
        """Query FDEs (partition sums): ``float32 (len(mv), output_dim)``.

        All repetitions in one pass: one product for every SimHash sketch, then a serial Numba
        kernel adds each token's AMS-projected vector into its partition of every repetition.
        """
        if not isinstance(mv, MultiVectors):
            raise TypeError(f"expected MultiVectors, got {type(mv).__name__}")
        if len(mv) and mv.dim != self.config.dim:
            raise ValueError(f"vectors have dimension {mv.dim}, the FDE config expects {self.config.dim}")
        c = self.config
        x = np.ascontiguousarray(mv.vectors, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError("query vectors must be finite (found NaN or inf)")
        out = np.zeros((len(mv), c.reps, c.partitions, c.projection_dim), dtype=np.float32)
        if x.shape[0]:
            item = np.repeat(np.arange(len(mv), dtype=np.int64), mv.lengths)
            if c.k_sim:
                bits = (x @ self._simhash_all > 0).reshape(-1, c.k_sim).astype(np.int64)
                labels = gray_partition_index(bits).reshape(x.shape[0], c.reps)
            else:
                labels = np.zeros((x.shape[0], c.reps), np.int64)
            _scatter_sum(x, item, labels, self._targets, self._signs, out)
        return self._final(out.reshape(len(mv), c.block_dim))

    def encode_documents(self, mv: MultiVectors, show_progress: bool = False) -> np.ndarray:
        """Document FDEs (partition averages, empty partitions filled): ``float32 (len(mv), output_dim)``."""
        return self._encode(mv, document=True, show_progress=show_progress)

    def _encode(self, mv: MultiVectors, document: bool, show_progress: bool) -> np.ndarray:
        if not isinstance(mv, MultiVectors):
            raise TypeError(f"expected MultiVectors, got {type(mv).__name__}")
        if len(mv) and mv.dim != self.config.dim:
            raise ValueError(f"vectors have dimension {mv.dim}, the FDE config expects {self.config.dim}")
        from tqdm.auto import tqdm

        out = np.zeros((len(mv), self.output_dim), dtype=np.float32)
        for s in tqdm(range(0, len(mv), _ENCODE_BATCH), desc="fde", unit="batch", disable=not show_progress):
            e = min(s + _ENCODE_BATCH, len(mv))
            a, b = int(mv.offsets[s]), int(mv.offsets[e])
            block = self._encode_block(np.asarray(mv.vectors[a:b], dtype=np.float32),
                                       np.asarray(mv.offsets[s:e + 1] - a), document)
            out[s:e] = self._final(block)
        return out

    def _final(self, block: np.ndarray) -> np.ndarray:
        if self.count_sketch is None:
            return block
        import scipy.sparse as sp

        idx, sign = self.count_sketch
        proj = sp.csr_matrix((sign, (np.arange(idx.size), idx)), shape=(idx.size, self.config.final_dim))
        return np.asarray(block @ proj, dtype=np.float32) if block.shape[0] else np.zeros(
            (0, self.config.final_dim), np.float32)

    def _encode_block(self, x: np.ndarray, offsets: np.ndarray, document: bool) -> np.ndarray:
        """FDEs before the final projection for items with flat vectors ``x`` and local ``offsets``."""
        import scipy.sparse as sp

        c = self.config
        n, parts, dp = offsets.size - 1, c.partitions, c.projection_dim
        out = np.zeros((n, c.reps, parts, dp), dtype=np.float32)
        lengths = np.diff(offsets)
        item = np.repeat(np.arange(n), lengths)
        t = x.shape[0]
        if t == 0:
            return out.reshape(n, -1)
        for rep in range(c.reps):
            sketch = x @ self.simhash[rep]
            bits = (sketch > 0).astype(np.int64)
            label = gray_partition_index(bits) if c.k_sim else np.zeros(t, np.int64)
            ams = self._ams_sparse[rep]
            if ams is None:
                proj = x
            else:
                proj = np.zeros((t, dp), dtype=np.float32)
                with PARALLEL_LOCK:  # one numba parallel region at a time (workqueue layer)
                    _ams_project(x, ams[0], ams[1], proj)
            assign = sp.csr_matrix((np.ones(t, np.float32), (item * parts + label, np.arange(t))),
                                   shape=(n * parts, t))
            sums = np.asarray(assign @ proj, dtype=np.float32).reshape(n, parts, dp)
            if document:
                counts = np.bincount(item * parts + label, minlength=n * parts).reshape(n, parts)
                np.divide(sums, counts[:, :, None], out=sums, where=counts[:, :, None] > 0)
                if c.fill_empty_partitions and c.k_sim:
                    self._fill(sums, counts, bits, proj, offsets, lengths, item)
            out[:, rep] = sums
        return out.reshape(n, -1)

    def _fill(self, sums: np.ndarray, counts: np.ndarray, bits: np.ndarray, proj: np.ndarray,
              offsets: np.ndarray, lengths: np.ndarray, item: np.ndarray) -> None:
        """Fill empty partitions of non-empty items with the Hamming-nearest point (first on ties)."""
        k = bits.shape[1]
        raw = bits @ (1 << np.arange(k - 1, -1, -1, dtype=np.int64))  # sign bits, first hyperplane = MSB
        part = np.arange(1 << k, dtype=np.int64)
        target = part ^ (part >> 1)  # the reference's GrayCodeToBinary: sign bits of each partition
        dist = _popcount(raw[:, None] ^ target[None, :])  # (tokens, partitions)
        local = np.arange(item.size) - offsets[item]
        span = int(lengths.max()) + 1
        key = dist * span + local[:, None]  # min distance first, then lowest position
        nonempty = np.flatnonzero(lengths > 0)
        best = np.minimum.reduceat(key, offsets[nonempty], axis=0)  # (nonempty items, partitions)
        nearest = offsets[nonempty][:, None] + best % span
        empty = counts[nonempty] == 0
        rows, cols = np.nonzero(empty)
        sums[nonempty[rows], cols] = proj[nearest[rows, cols]]


#: the files every lsr.fde directory's manifest must checksum (its own and its FDE index's)
REQUIRED_FILES = ("multivectors.npy", "multivectors_offsets.npy", "doc_ids.parquet", "fde/faiss.index",
                  "fde/doc_ids.parquet")


class FDEIndex:
    """FAISS over document FDEs, candidates re-ranked by exact MaxSim on stored multi-vectors.

    Build with :meth:`build`; :meth:`search` takes query :class:`MultiVectors` and returns
    ``(ids, scores)`` of shape ``(nq, k)`` padded with -1 (MaxSim scores after re-ranking).
    """

    FORMAT = "lsr.fde"
    VERSION = 1

    def __init__(self, encoder: FDEEncoder, dense: Any, docs: MultiVectors,
                 doc_ids: Sequence[str] | np.ndarray | None = None, candidates: int = DEFAULT_CANDIDATES) -> None:
        if len(docs) != len(dense):
            raise ValueError(f"{len(docs)} multi-vector documents but {len(dense)} FDEs")
        self.encoder = encoder
        self.dense = dense
        self.docs = docs
        if doc_ids is None:
            doc_ids = dense.doc_ids
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        if self.doc_ids.shape != (len(docs),):
            raise ValueError(f"{len(docs)} documents but doc_ids of shape {self.doc_ids.shape}")
        self.candidates = positive_int(candidates, "candidates")

    @classmethod
    def build(cls, docs: MultiVectors, config: FDEConfig | None = None, doc_ids: Sequence[str] | None = None,
              candidates: int = DEFAULT_CANDIDATES, index_type: str = "flat", show_progress: bool = False,
              **index_params: Any) -> "FDEIndex":
        """Encode document FDEs and index them (``index_type`` as for :class:`DenseIndex`)."""
        from lsr.index.dense import DenseIndex

        config = config or FDEConfig(dim=docs.dim)
        encoder = FDEEncoder(config)
        fdes = encoder.encode_documents(docs, show_progress=show_progress)
        dense = DenseIndex.build(fdes, doc_ids=doc_ids, index_type=index_type, **index_params)
        store = MultiVectors(np.asarray(docs.vectors, dtype=np.float16), docs.offsets)
        return cls(encoder, dense, store, dense.doc_ids, candidates)

    def __len__(self) -> int:
        return len(self.docs)

    def __repr__(self) -> str:
        return f"FDEIndex(n_docs={len(self)}, fde={self.encoder.config.to_dict()}, candidates={self.candidates})"

    def search_fde(self, queries: MultiVectors, k: int, threads: int = 1,
                   allowed: np.ndarray | None = None) -> SearchResults:
        """Top-``k`` by FDE inner product only (no re-ranking), among the ``allowed`` documents
        (see :meth:`search`).

        A CPU flat index is scored with one float32 matrix product for the whole query batch
        (faster than FAISS's per-query scan for a batch; with at most a quarter of the documents
        allowed, over their FDEs only); other index types go through FAISS
        (:meth:`DenseIndex.search`, which handles ``allowed``).
        """
        mask = check_allowed(allowed, len(self))
        qf = self.encoder.encode_queries(queries)
        flat = self.dense.flat_vectors()
        if flat is None:
            return self.dense.search(qf, k=k, threads=threads, allowed=mask)
        k = min(positive_int(k, "k"), len(self))
        if mask is None:
            return SearchResults(*_top_k(qf @ flat.T, k), self.doc_ids)
        rows = np.flatnonzero(mask)
        if 4 * rows.size > len(self):
            s = qf @ flat.T
            s[:, ~mask] = -np.inf  # never returned
            return SearchResults(*_top_k(s, k), self.doc_ids)
        sub, scores = _top_k(qf @ flat[rows].T, k)
        ids = np.where(sub >= 0, rows[np.maximum(sub, 0)] if rows.size else -1, -1)  # rows ascend: ties kept
        return SearchResults(ids, scores, self.doc_ids)

    def search(self, queries: MultiVectors, k: int = 10, threads: int = 1,
               candidates: int | None = None, allowed: np.ndarray | None = None) -> SearchResults:
        """FDE top-``max(candidates, k)`` re-ranked by exact MaxSim; ``(ids, scores)`` ``(nq, k)``.

        ``allowed`` (bool, or uint8 with non-zero = allowed, one per document; ``None``: all)
        holds in both stages: the FDE candidates are drawn from the allowed documents only (so
        there are ``min(candidates, allowed)`` of them; HNSW/IVF FDE indexes switch to exact FDE
        scoring when few are allowed, see :meth:`DenseIndex.search`), and re-ranking drops any
        other. Like the unfiltered search, the result is exact MaxSim over the candidates, not
        over all allowed documents."""
        k = positive_int(k, "k")
        mask = check_allowed(allowed, len(self))
        c = max(self.candidates if candidates is None else positive_int(candidates, "candidates"), k)
        cand, _ = self.search_fde(queries, c, threads, allowed=mask)
        return maxsim_rerank(queries, self.docs, cand, k, threads=threads, doc_ids=self.doc_ids, allowed=mask)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> None:
        with atomic_directory(path, self.FORMAT, overwrite=overwrite) as tmp:
            self._write(tmp)

    def _write(self, directory: Path) -> None:
        (directory / "fde").mkdir()
        self.dense._write(directory / "fde")
        fields = save_multivectors(directory, self.docs)
        save_ids(directory, "doc_ids.parquet", self.doc_ids)
        write_manifest(directory, self.FORMAT, self.VERSION, {
            "n_docs": len(self), "fde": self.encoder.config.to_dict(), "candidates": self.candidates,
            "multivectors": fields})

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "FDEIndex":
        from lsr.index.dense import DenseIndex

        path = resolve_dir(path)
        m = read_manifest(path, cls.FORMAT, cls.VERSION, verify=verify, required=REQUIRED_FILES)
        where = path / "manifest.json"
        n_docs = field_int(m, "n_docs", where)
        try:
            config = FDEConfig.from_dict(field_dict(m, "fde", where, optional=False))
            candidates = positive_int(m.get("candidates", DEFAULT_CANDIDATES), "candidates")
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where}: bad FDE fields ({exc})") from exc
        # this manifest checked (and with ``verify`` hashed) every file below it, fde/ included
        dense = DenseIndex.load(path / "fde", mmap=mmap, verify=False)
        if dense.dim != config.output_dim or len(dense) != n_docs:
            raise IndexFormatError(f"{path}/fde: {len(dense)} x {dense.dim} FDEs, manifest says "
                                   f"{n_docs} x {config.output_dim}")
        docs = load_multivectors(path, field_dict(m, "multivectors", where, optional=False), "multivectors", mmap)
        if len(docs) != n_docs or docs.dim != config.dim:
            raise IndexFormatError(f"{path}/multivectors.npy: {len(docs)} documents of dimension {docs.dim}, "
                                   f"expected {n_docs} of dimension {config.dim}")
        return cls(FDEEncoder(config), dense, docs, load_ids(path, "doc_ids.parquet", n_docs), candidates)
