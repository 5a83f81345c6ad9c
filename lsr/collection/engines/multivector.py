"""Multi-vector engines: MaxSim (exact late interaction) and MUVERA (FDE candidates, exact MaxSim).

A segment stores its documents' token vectors as the retrievers store them
(``multivectors.npy`` float16 + ``multivectors_offsets.npy``, :func:`lsr.io.manifest.save_multivectors`)
and, for MUVERA, each document's FDE (``fdes.npy``, float32, encoded from the encoder's output as
``FDEIndex.build`` encodes it, with the FDE configuration of the options; the seed fixes the
projections, so every segment's FDEs live in one space). A merge copies the kept rows of both.

Search: MaxSim scores every allowed document exactly (``maxsim_scores``). MUVERA scores the FDEs of
the allowed documents of every segment exactly (a flat FDE product; another ``index_type`` is
refused), takes the snapshot-wide top ``max(candidates, k)`` by (score, segment,
position), as a fresh flat FDE index over the surviving documents does, and re-ranks them by
exact MaxSim (``maxsim_rerank``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.collection.engines.base import (
    Engine,
    Hits,
    check_n_docs,
    check_search,
    merge_hits,
    parts_mask,
    top_k_rows,
)
from lsr.errors import IndexFormatError
from lsr.io.manifest import load_array, load_multivectors, read_manifest, save_array, save_multivectors, write_manifest
from lsr.retrievers.options import MaxSimOptions, MuveraOptions
from lsr.types import MultiVectors

logger = logging.getLogger(__name__)

__all__ = ["MaxSimEngine", "MuveraEngine", "MultiVectorPart"]

VERSION = 1


class MultiVectorPart:
    """One segment: token vectors (memory-mapped float16) and, for MUVERA, the FDEs."""

    def __init__(self, directory: Path, docs: MultiVectors, fdes: np.ndarray | None = None) -> None:
        self.directory = Path(directory)
        self.docs, self.fdes = docs, fdes
        self.n_docs = len(docs)


def _kept(docs: MultiVectors, keep: np.ndarray) -> MultiVectors:
    rows = np.flatnonzero(keep)
    lengths = np.diff(docs.offsets)[rows]
    offsets = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    take = np.concatenate([np.arange(docs.offsets[r], docs.offsets[r + 1]) for r in rows]) if rows.size else \
        np.zeros(0, np.int64)
    return MultiVectors(np.asarray(docs.vectors[take], np.float16).reshape(-1, docs.dim), offsets)


class MaxSimEngine(Engine):
    """Exact MaxSim over every allowed document's token vectors."""

    name = "maxsim"
    options_class: type = MaxSimOptions
    format = "lsr.segment.maxsim"

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        from lsr.retrievers.base import retriever_class

        self.encoder = retriever_class(self.name).from_options(options).encoder

    def state(self) -> dict[str, Any]:
        cfg = self.encoder.config()
        return {"encoder": {k: cfg.get(k) for k in ("type", "model", "mode", "doc_max_length", "dim")}}

    # ------------------------------------------------------------------ writing
    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        self._write(Path(directory), self.encoder.encode_documents(list(texts), show_progress=show_progress))

    def merge_segments(self, parts: Sequence[tuple[MultiVectorPart, np.ndarray]], directory: Path) -> None:
        keeps = parts_mask(parts)
        kept = [_kept(p.docs, keep) for (p, _), keep in zip(parts, keeps)]
        fdes = None
        if self.name == "muvera":
            fdes = np.concatenate([np.asarray(p.fdes)[keep] for (p, _), keep in zip(parts, keeps)]) if parts else None
        docs = MultiVectors.concat(kept) if kept else MultiVectors(np.zeros((0, 1), np.float16), np.zeros(1, np.int64))
        self._write(Path(directory), docs, fdes)

    def _write(self, directory: Path, docs: MultiVectors, fdes: np.ndarray | None = None) -> None:
        fields = save_multivectors(directory, MultiVectors(np.asarray(docs.vectors, np.float16), docs.offsets))
        write_manifest(directory, self.format, VERSION, {"n_docs": len(docs), "multivectors": fields,
                                                         **self._extra(directory, docs, fdes)})

    def _extra(self, directory: Path, docs: MultiVectors, fdes: np.ndarray | None) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ reading
    def open_segment(self, directory: Path, n_docs: int) -> MultiVectorPart:
        directory = Path(directory)
        m = read_manifest(directory, self.format, VERSION, verify=False)  # sizes; the segment manifest has hashes
        try:
            n = int(m["n_docs"])
            docs = load_multivectors(directory, m["multivectors"], "multivectors", mmap=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{directory}/manifest.json: missing or bad field ({exc})") from exc
        check_n_docs(directory, n, n_docs)
        if len(docs) != n:
            raise IndexFormatError(f"{directory}/multivectors_offsets.npy: {len(docs)} documents, expected {n}")
        return MultiVectorPart(directory, docs, self._open_extra(directory, m, n, docs))

    def _open_extra(self, directory: Path, m: dict[str, Any], n: int, docs: MultiVectors) -> np.ndarray | None:
        return None

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[MultiVectorPart, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        from lsr.index.maxsim import maxsim_scores

        queries, k, masks = check_search(queries, k, segments, allowed, search_options, self.name)
        if not segments or not queries:
            return merge_hits([], len(queries), k)
        q = self.encoder.encode_queries(queries)
        # documents without vectors score -inf and are never returned, as in maxsim_search
        return merge_hits([top_k_rows(maxsim_scores(q, p.docs), mask, min(k, p.n_docs))
                           for (p, _), mask in zip(segments, masks)], len(queries), k)


class MuveraEngine(MaxSimEngine):
    """MUVERA: snapshot-wide FDE candidates among the allowed documents, re-ranked by exact MaxSim."""

    name = "muvera"
    options_class = MuveraOptions
    format = "lsr.segment.muvera"

    def __init__(self, options: MuveraOptions) -> None:
        if options.index_type != "flat":  # refused, not silently recorded and ignored
            raise ValueError(f"index_type={options.index_type!r}: a collection's MUVERA engine scores the FDEs of "
                             "the allowed documents exactly (flat); build a MuveraRetriever for an approximate "
                             "FDE index")
        super().__init__(options)

    def fde_encoder(self, dim: int) -> Any:
        from lsr.index.muvera import FDEConfig, FDEEncoder

        return FDEEncoder(FDEConfig(dim=dim, **self.options.fde_args()))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "fde": self.options.fde_args()}

    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        docs = self.encoder.encode_documents(list(texts), show_progress=show_progress)
        self._write(Path(directory), docs, self.fde_encoder(docs.dim).encode_documents(docs))

    def _extra(self, directory: Path, docs: MultiVectors, fdes: np.ndarray | None) -> dict[str, Any]:
        config = self.fde_encoder(docs.dim).config
        fdes = np.zeros((0, config.output_dim), np.float32) if fdes is None else np.asarray(fdes, np.float32)
        save_array(directory, "fdes.npy", fdes)
        return {"fde": config.to_dict()}

    def _open_extra(self, directory: Path, m: dict[str, Any], n: int, docs: MultiVectors) -> np.ndarray:
        from lsr.index.muvera import FDEConfig

        try:
            config = FDEConfig.from_dict(m["fde"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{directory}/manifest.json: bad field 'fde' ({exc})") from exc
        if n and config != self.fde_encoder(docs.dim).config:
            raise IndexFormatError(f"{directory}/manifest.json: FDE configuration {config.to_dict()} is not the "
                                   f"collection's {self.fde_encoder(docs.dim).config.to_dict()}")
        return load_array(directory, "fdes.npy", np.float32, (n, config.output_dim))

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[MultiVectorPart, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        from lsr.index.maxsim import maxsim_rerank

        queries, k, masks = check_search(queries, k, segments, allowed, search_options, self.name)
        nq = len(queries)
        dims = {p.docs.dim for p, _ in segments if p.n_docs}
        if not dims or not nq:
            return merge_hits([], nq, k)
        q = self.encoder.encode_queries(queries)
        qf = self.fde_encoder(dims.pop()).encode_queries(q)
        c = max(self.options.candidates, k)
        seg, pos, _ = merge_hits([top_k_rows(qf @ np.asarray(p.fdes).T, mask, min(c, p.n_docs))
                                  for (p, _), mask in zip(segments, masks)], nq, c)
        per_segment = []
        for s, (p, _) in enumerate(segments):
            cand = np.where(seg == s, pos, -1)
            if p.n_docs == 0 or not (cand >= 0).any():
                per_segment.append((np.full((nq, 0), -1, np.int64), np.zeros((nq, 0), np.float32)))
                continue
            res = maxsim_rerank(q, p.docs, cand, min(k, p.n_docs), threads=threads)
            per_segment.append((res.ids, res.scores))
        return merge_hits(per_segment, nq, k)
