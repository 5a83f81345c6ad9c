"""Hybrid engine: one component engine per component, fused as HybridRetriever fuses.

``HybridOptions.components`` (``"bm25,dense=MODEL"``) names the components; each is the engine
of that retriever kind built from its options (the model the spec gives, defaults otherwise, as
``HybridRetriever.from_options`` builds them) and keeps its files in a subdirectory
``<i>-<name>/`` of the collection's ``engine/`` and of every segment's ``engine/``. A search
takes each component's top ``depth`` over the snapshot (live and allowed documents) and fuses
them with :func:`lsr.fusion.combine.fuse_arrays` and the parameters of a
:class:`~lsr.retrievers.hybrid.HybridRetriever` with these options, so the result is a fresh
``HybridRetriever``'s over the surviving documents. One difference: fusion breaks ties by its
integer ids, which here follow the collection's order (ties by segment, then position), while a
fresh ``HybridRetriever`` numbers documents by their sorted external ids; tied fused scores may
therefore come in another order, and rank-based methods (rrf, ...) rank tied component scores
in collection order.

Search option ``component=i`` (for sharded search, :mod:`lsr.distributed.search`, which fuses
at the driver over every shard): component ``i``'s own top ``k`` over the snapshot, unfused;
the other search options then go to that component (e.g. BM25's ``statistics``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.collection.engines.base import Engine, Hits, check_search, empty_hits, engine_class
from lsr.errors import IndexFormatError
from lsr.retrievers.options import OPTIONS, HybridOptions

logger = logging.getLogger(__name__)

__all__ = ["HybridEngine", "HybridPart"]


class HybridPart:
    """One segment: the component engines' parts, in component order."""

    def __init__(self, parts: list[Any], n_docs: int) -> None:
        self.parts = parts
        self.n_docs = int(n_docs)


class HybridEngine(Engine):
    """Component engines fused into one ranking (normaliser, fusion, weights, depth)."""

    name = "hybrid"
    options_class = HybridOptions

    def __init__(self, options: HybridOptions) -> None:
        super().__init__(options)
        from lsr.retrievers.hybrid import HybridRetriever, parse_components

        if options.prf != "none":
            raise ValueError("prf: a collection's hybrid engine fuses first-pass runs only (prf=none)")
        spec = parse_components(options.components)
        self.components: list[Engine] = []
        self.dirs: list[str] = []
        for i, (name, model) in enumerate(spec):
            oc = OPTIONS.get(name)
            if oc is None:
                raise ValueError(f"components: unknown retriever {name!r} in {options.components!r}")
            fields = {f.name for f in dataclasses.fields(oc)}
            self.components.append(engine_class(name).create(oc(**({"model": model} if "model" in fields
                                                                  and model else {}))))
            self.dirs.append(f"{i}-{name}")
        # the fusion a fresh HybridRetriever with these options runs (checks weights, names)
        self.fuser = HybridRetriever(self.components, norm=options.norm, fusion=options.fusion,  # type: ignore[arg-type]
                                     weights=options.weights, depth=options.depth)

    def state(self) -> dict[str, Any]:
        return {"component_dirs": self.dirs}

    def save(self, directory: Path) -> None:
        super().save(directory)
        for engine, sub in zip(self.components, self.dirs):
            (Path(directory) / sub).mkdir()
            engine.save(Path(directory) / sub)

    def check_saved(self, directory: Path) -> None:
        super().check_saved(directory)
        for engine, sub in zip(self.components, self.dirs):
            engine.check_saved(Path(directory) / sub)

    def write_segment(self, texts: Sequence[str], directory: Path, show_progress: bool = False) -> None:
        for engine, sub in zip(self.components, self.dirs):
            (Path(directory) / sub).mkdir()
            engine.write_segment(texts, Path(directory) / sub, show_progress=show_progress)

    def check_encoded(self, vectors: Any) -> None:
        """``vectors``: one entry per component, in the order of ``components`` (None: that
        component encodes the documents itself, as BM25 always does)."""
        if not isinstance(vectors, (list, tuple)) or len(vectors) != len(self.components):
            raise ValueError(f"vectors: a list with one entry (or None) per component of "
                             f"{self.options.components!r} ({len(self.components)})")
        for engine, v in zip(self.components, vectors):
            if v is not None:
                engine.check_encoded(v)

    def take_encoded(self, vectors: Any, ids: Sequence[str]) -> Any:
        return [None if v is None else e.take_encoded(v, ids) for e, v in zip(self.components, vectors)]

    def write_encoded(self, encoded: Any, texts: Sequence[str], directory: Path) -> None:
        for engine, sub, rows in zip(self.components, self.dirs, encoded):
            (Path(directory) / sub).mkdir()
            if rows is None:
                engine.write_segment(texts, Path(directory) / sub)
            else:
                engine.write_encoded(rows, texts, Path(directory) / sub)

    def merge_segments(self, parts: Sequence[tuple[HybridPart, np.ndarray]], directory: Path) -> None:
        for i, (engine, sub) in enumerate(zip(self.components, self.dirs)):
            (Path(directory) / sub).mkdir()
            engine.merge_segments([(p.parts[i], keep) for p, keep in parts], Path(directory) / sub)

    def open_segment(self, directory: Path, n_docs: int) -> HybridPart:
        directory = Path(directory)
        for sub in self.dirs:
            if not (directory / sub).is_dir():
                raise IndexFormatError(f"{directory}: missing component directory {sub}")
        return HybridPart([e.open_segment(directory / sub, n_docs) for e, sub in zip(self.components, self.dirs)],
                          n_docs)

    def search(self, queries: Sequence[str], k: int, segments: Sequence[tuple[HybridPart, np.ndarray | None]],
               allowed: Sequence[np.ndarray | None] | None = None, threads: int = 1, **search_options: Any) -> Hits:
        from lsr.fusion.combine import fuse_arrays

        component = search_options.pop("component", None)
        if component is not None:
            if isinstance(component, bool) or not isinstance(component, int) or not 0 <= component < len(self.components):
                raise ValueError(f"component must be an index below {len(self.components)}, got {component!r}")
            return self.components[component].search(queries, k, [(p.parts[component], live) for p, live in segments],
                                                      allowed=allowed, threads=threads, **search_options)
        queries, k, _ = check_search(queries, k, segments, allowed, search_options, self.name)
        nq = len(queries)
        if not segments or not nq:
            return empty_hits(nq, k)
        # shared ids: the collection order reversed, so fusion's (score desc, id desc) ties run in
        # collection order (segment, position), as every engine's do
        offsets = np.concatenate([[0], np.cumsum([p.n_docs for p, _ in segments])]).astype(np.int64)
        total = int(offsets[-1])
        ids, scores = [], []
        for i, engine in enumerate(self.components):
            seg, pos, sc = engine.search(queries, self.fuser.depth, [(p.parts[i], live) for p, live in segments],
                                         allowed=allowed, threads=threads)
            ids.append(np.where(pos >= 0, total - 1 - (offsets[np.maximum(seg, 0)] + pos), -1))
            scores.append(np.asarray(sc, np.float64))
        fused = fuse_arrays(ids, scores, **self.fuser.fuse_kwargs(k))
        f_ids, f_scores = fused.ids[:, :k], fused.scores[:, :k]
        out_seg, out_pos, out_scores = empty_hits(nq, k)
        ok = f_ids >= 0
        g = total - 1 - f_ids[ok]
        s = np.searchsorted(offsets, g, side="right") - 1
        out_seg[:, :f_ids.shape[1]][ok] = s
        out_pos[:, :f_ids.shape[1]][ok] = g - offsets[s]
        out_scores[:, :f_ids.shape[1]][ok] = f_scores[ok]
        return out_seg, out_pos, out_scores
