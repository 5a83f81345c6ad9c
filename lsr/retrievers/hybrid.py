"""HybridRetriever: several retrievers, one fused ranking -- what a RAG pipeline calls.

>>> from lsr.retrievers.sparse import BM25Retriever
>>> h = HybridRetriever([BM25Retriever(), BM25Retriever(k1=1.2, b=0.75)], norm="min-max", fusion="wsum")
>>> h.index(["d1", "d2", "d3"], ["heart disease and blood pressure", "stock markets fell", "heart attack"])
>>> h.search(["heart disease"], k=2).hits(0)[0][0]
'd1'

Saved as one directory: ``manifest.json`` (retriever ``hybrid``, its configuration: component
names, normaliser, fusion, weights, depth, floor, PRF) and ``components/<i>-<name>/``, each a
component's own saved retriever directory. Weights tuned with :meth:`HybridRetriever.tune`
are stored in that configuration.

PRF interpolation (Li et al., SIGIR 2022, "To Interpolate or Not to Interpolate: PRF, Dense and
Sparse Retrievers"), ``prf=``:

* ``"none"``: fuse the components' first-pass runs;
* ``"after"``: PRF each component on its own first-pass top documents, then fuse;
* ``"before"``: fuse first, take the feedback documents from the fused ranking, PRF each
  component with them; the result is the PRF run of component ``prf_target`` (no second fusion);
* ``"both"``: as ``"before"``, then fuse the PRF runs again.

Components without a PRF (multi-vector) pass their first-pass run through.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lsr.errors import IndexFormatError
from lsr.retrievers.base import (
    RETRIEVER_FORMAT,
    RETRIEVER_FORMAT_VERSION,
    Retriever,
    SearchResults,
    as_queries,
    load_retriever,
    make_options,
    retriever_class,
)
from lsr.io.manifest import inside, positive_int, write_manifest
from lsr.retrievers.options import PRF_MODES, HybridOptions, parse_weights
from lsr.types import DocIds
from lsr.fusion.combine import canonical_fusion, fuse_arrays
from lsr.fusion.normalize import canonical_normalizer

logger = logging.getLogger(__name__)

__all__ = ["HybridRetriever", "prf_interpolation", "PRF_MODES", "parse_components"]

Arrays = tuple[np.ndarray, np.ndarray]
# (feedback ids (nq, f) in the shared id space, their scores) -> that component's PRF run
PRFCall = Callable[[np.ndarray, np.ndarray], Arrays]


def _fuse(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], **kwargs: Any) -> Arrays:
    fused = fuse_arrays(ids, scores, **kwargs)
    return fused.ids, fused.scores


def prf_interpolation(first: Sequence[Arrays], prf: Sequence[PRFCall | None], mode: str, fuse_kwargs: dict,
                      fb_docs: int = 10, target: int = 0) -> tuple[Arrays, list[Arrays]]:
    """Interpolate before, after or both around PRF; returns ``(final run, per-component runs)``.

    ``first`` are the components' first-pass ``(ids, scores)`` in one shared id space; ``prf[i]``
    re-retrieves for component i given feedback documents (or is None: no PRF for it)."""
    if mode not in PRF_MODES:
        raise ValueError(f"prf mode must be one of {PRF_MODES}, not {mode!r}")
    if mode == "none":
        return _fuse([f[0] for f in first], [f[1] for f in first], **fuse_kwargs), list(first)
    if mode == "after":
        runs = [f if p is None else p(f[0][:, :fb_docs], f[1][:, :fb_docs]) for f, p in zip(first, prf)]
        return _fuse([r[0] for r in runs], [r[1] for r in runs], **fuse_kwargs), runs
    fused = _fuse([f[0] for f in first], [f[1] for f in first], **{**fuse_kwargs, "k": fb_docs})
    runs = [f if p is None else p(*fused) for f, p in zip(first, prf)]
    if mode == "before":
        return runs[target], runs
    return _fuse([r[0] for r in runs], [r[1] for r in runs], **fuse_kwargs), runs


def parse_components(spec: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"bm25,splade=/models/splade-tiny,dense=/models/minilm"`` -> [(name, model or None), ...]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        name, _, model = item.strip().partition("=")
        if not name:
            raise ValueError(f"empty component in {spec!r}")
        if name == "hybrid":
            raise ValueError("a hybrid retriever cannot contain another hybrid")
        out.append((name, model or None))
    if not out:
        raise ValueError("no components given")
    return out


class HybridRetriever(Retriever):
    """Fuses the runs of component retrievers (normaliser + fusion + weights + candidate depth)."""

    name = "hybrid"

    def __init__(self, components: Sequence[Retriever], norm: str = "min-max", fusion: str = "wsum",
                 weights: Sequence[float] | None = None, depth: int = 1000, floor: str = "zero",
                 norm_params: dict | list[dict] | None = None, fusion_params: dict | None = None,
                 prf: str = "none", prf_params: dict | None = None, prf_target: int = 0,
                 tuning: dict | None = None) -> None:
        if not components:
            raise ValueError("a hybrid retriever needs at least one component")
        if weights is not None:
            weights = parse_weights(weights)
            if len(weights) != len(components):
                raise ValueError(f"{len(weights)} weights for {len(components)} components")
        if prf not in PRF_MODES:
            raise ValueError(f"prf must be one of {PRF_MODES}, not {prf!r}")
        self.components = list(components)
        self.norm = canonical_normalizer(norm)
        self.fusion = canonical_fusion(fusion)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.depth, self.floor = positive_int(depth, "depth"), floor
        self.norm_params, self.fusion_params = norm_params, dict(fusion_params or {})
        self.prf, self.prf_params, self.prf_target = prf, dict(prf_params or {}), int(prf_target)
        self.tuning = tuning
        # (shared vocabulary, per-component position maps, the components' DocIds they were made from)
        self._space: tuple[np.ndarray, list[np.ndarray], list[DocIds]] | None = None
        self._prf_objects: list[Any] | None = None

    # ------------------------------------------------------------------ building
    options_class = HybridOptions

    @classmethod
    def from_options(cls, options: HybridOptions | None = None, /, **fields: Any) -> "HybridRetriever":
        """Build from :class:`HybridOptions` (``components`` "bm25,splade=MODEL,dense=MODEL", ``norm``,
        ``fusion``, ``weights``, ``depth``, ``prf``); the other fields go to each component that has
        them (``model`` to those the spec names no model for). A field no component has is refused.

        >>> HybridRetriever.from_options(components="bm25", k1=1.2).components[0].encoder.k1
        1.2
        """
        import dataclasses

        own = {f.name for f in dataclasses.fields(HybridOptions)}
        opts = make_options(cls, options, {k: v for k, v in fields.items() if k in own})
        rest = {k: v for k, v in fields.items() if k not in own}
        spec = parse_components(opts.components)
        classes = [retriever_class(name) for name, _ in spec]
        used: set[str] = set()
        comps = []
        for (name, model), rc in zip(spec, classes):
            allowed = {f.name for f in dataclasses.fields(rc.options_class)}
            mine = {k: v for k, v in rest.items() if k in allowed}
            if "model" in allowed and model is not None:
                mine["model"] = model
            used |= set(mine)
            comps.append(rc.from_options(**mine))
        unused = sorted(set(rest) - used)
        if unused:
            raise ValueError(f"{', '.join(unused)}: not an option of any component ({opts.components})")
        return cls(comps, norm=opts.norm, fusion=opts.fusion, weights=opts.weights, depth=opts.depth, prf=opts.prf)

    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool = False) -> None:
        for c in self.components:
            logger.info("indexing component %s", c.name)
            c.index(doc_ids, texts, show_progress=show_progress)
        self._space = None
        self._prf_objects = None

    # ------------------------------------------------------------------ id space
    def _id_space(self, results: Sequence[SearchResults]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Shared ids: positions in the sorted union of the components' document ids, so integer
        order is string order (ties break as trec_eval does). Made once, and again when a
        component's documents changed (a component re-indexed on its own)."""
        if self._space is not None:
            vocab, maps, made_from = self._space
            if len(made_from) == len(results) and all(r.doc_ids.same_as(d) for r, d in zip(results, made_from)):
                return vocab, maps
        made_from = [DocIds(r.doc_ids) for r in results]  # before np.asarray materialises positions
        all_ids = [np.asarray(r.doc_ids, dtype=object).astype(str) for r in results]
        vocab = np.unique(np.concatenate(all_ids)).astype(object) if all_ids else np.zeros(0, object)
        maps = [np.searchsorted(vocab.astype(str), ids).astype(np.int64) for ids in all_ids]
        self._space = (vocab, maps, made_from)
        return vocab, maps

    def _to_shared(self, results: Sequence[SearchResults]) -> list[Arrays]:
        _, maps = self._id_space(results)
        return [(np.where(r.ids >= 0, m[np.maximum(r.ids, 0)], -1), r.scores.astype(np.float64))
                for r, m in zip(results, maps)]

    def fuse_kwargs(self, k: int) -> dict[str, Any]:
        return {"norm": self.norm, "method": self.fusion, "weights": self.weights, "depth": self.depth,
                "k": k, "floor": self.floor, "norm_params": self.norm_params, **self.fusion_params}

    # ------------------------------------------------------------------ search
    def component_results(self, queries: Sequence[str], threads: int = 1,
                          show_progress: bool = False) -> list[SearchResults]:
        """Every component's top-``depth`` results for the queries."""
        return [c.search(queries, k=self.depth, threads=threads, show_progress=show_progress)
                for c in self.components]

    def fuse_results(self, results: Sequence[SearchResults], k: int = 10) -> SearchResults:
        """Fuse already-computed component results (same queries, same order); ``k`` is capped
        at the number of documents, as every retriever's is."""
        k = positive_int(k, "k")
        shared = self._to_shared(results)
        vocab = self._id_space(results)[0]
        ids, scores = fuse_arrays([s[0] for s in shared], [s[1] for s in shared], **self.fuse_kwargs(k))
        return _width(ids, scores, min(k, len(vocab)), vocab)

    def search(self, queries: str | Sequence[str], k: int = 10, threads: int = 1,
               show_progress: bool = False) -> SearchResults:
        queries = as_queries(queries)
        k = positive_int(k, "k")
        results = self.component_results(queries, threads, show_progress)
        if self.prf == "none":
            return self.fuse_results(results, k)
        from lsr.retrievers.prf import prf_for

        vocab, maps = self._id_space(results)
        if self._prf_objects is None:
            self._prf_objects = [prf_for(c, self.prf_params.get("sparse"), self.prf_params.get("dense"))
                                 for c in self.components]

        def make_call(i: int, p: Any) -> PRFCall:
            def call(fb_ids: np.ndarray, fb_scores: np.ndarray) -> Arrays:
                feedback = [[vocab[d] for d in row if d >= 0] for row in fb_ids]
                res = p.search(queries, k=self.depth, feedback=feedback, feedback_scores=fb_scores,
                               threads=threads)
                return _shared_one(res, maps[i])
            return call

        calls = [None if p is None else make_call(i, p) for i, p in enumerate(self._prf_objects)]
        (ids, scores), _ = prf_interpolation(self._to_shared(results), calls, self.prf, self.fuse_kwargs(k),
                                             fb_docs=int(self.prf_params.get("fb_docs", 10)),
                                             target=self.prf_target)
        return _width(ids, scores, min(k, len(vocab)), vocab)

    # ------------------------------------------------------------------ tuning
    def tune(self, queries: dict[str, str], qrels: dict[str, dict[str, int]], folds: int | None = None,
             metric: str = "ndcg@10", search: str = "grid", step: float = 0.1, threads: int = 1,
             show_progress: bool = False, k: int | None = None, selection: str = "1se") -> Any:
        """Tune the fusion weights on ``queries``/``qrels`` and keep them in the configuration.

        With ``folds`` (k-fold CV over these queries) returns the
        :class:`~lsr.fusion.tuning.CrossValidation` (held-out run and scores) and stores the weights
        tuned on all the queries; without, these are development queries: returns the
        :class:`~lsr.fusion.tuning.TuneResult`. ``selection``: ``"1se"`` (default; the most even
        weights within one standard error of the best) or ``"best"``
        (:func:`~lsr.fusion.tuning.select_weights`)."""
        from lsr.fusion.tuning import cross_validate, tune_weights

        qids = list(queries)
        results = self.component_results([queries[q] for q in qids], threads, show_progress)
        vocab, _ = self._id_space(results)
        runs = [SearchResults(i, s, vocab).to_run(qids) for i, s in self._to_shared(results)]
        kw = dict(norm=self.norm, method=self.fusion, metric=metric, search=search, step=step, depth=self.depth,
                  floor=self.floor, norm_params=self.norm_params, selection=selection, **self.fusion_params)
        full = tune_weights(runs, qrels, **kw)
        self.weights = full.weights
        self.tuning = {"metric": metric, "search": search, "step": step, "selection": selection,
                       "queries": len(qids), "score": full.score, "folds": folds}
        if folds:
            cv = cross_validate(runs, qrels, folds=folds, k=k, **kw)
            self.tuning.update({"cv_score": cv.score, "fold_weights": cv.fold_weights,
                                "fold_best_weights": [t.best_weights for t in cv.fold_tuning]})
            return cv
        return full

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"components": [c.name for c in self.components], "norm": self.norm, "fusion": self.fusion,
                "weights": self.weights, "depth": self.depth, "floor": self.floor,
                "norm_params": self.norm_params, "fusion_params": self.fusion_params, "prf": self.prf,
                "prf_params": self.prf_params, "prf_target": self.prf_target, "tuning": self.tuning}

    def _write(self, directory: Path) -> dict[str, Any]:
        """Each component as a retriever directory ``components/I-NAME`` inside this one (plain
        directories: this whole directory is swapped in atomically, and its manifest lists and
        hashes every file of every component)."""
        (directory / "components").mkdir()
        dirs = []
        for i, c in enumerate(self.components):
            sub = f"components/{i}-{c.name}"
            (directory / sub).mkdir()
            write_manifest(directory / sub, RETRIEVER_FORMAT, RETRIEVER_FORMAT_VERSION,
                           {"retriever": c.name, "config": c._write(directory / sub)})
            dirs.append(sub)
        return {**self.config(), "component_dirs": dirs}

    @classmethod
    def _read(cls, directory: Path, config: dict[str, Any], mmap: bool) -> "HybridRetriever":
        where = directory / "manifest.json"
        dirs, names = config.get("component_dirs"), config.get("components")
        if not isinstance(dirs, list) or not dirs:
            raise IndexFormatError(f"{where}: field 'config.component_dirs' must be a non-empty list of "
                                   f"directories inside {directory}, got {dirs!r:.60}")
        comps = []
        for i, d in enumerate(dirs):
            # inside this directory, no links: the hybrid's manifest lists (and, unless loaded with
            # verify=False, hashed) every file below it, so these components' files were verified
            sub = inside(directory, d, where, f"config.component_dirs[{i}]")
            comps.append(load_retriever(sub, mmap=mmap, verify=False))
            if isinstance(names, list) and len(names) == len(dirs) and names[i] != comps[-1].name:
                raise IndexFormatError(f"{sub}: holds a {comps[-1].name!r} retriever, {where} says {names[i]!r}")
        keep = {k: config[k] for k in ("norm", "fusion", "weights", "depth", "floor", "norm_params",
                                       "fusion_params", "prf", "prf_params", "prf_target", "tuning") if k in config}
        return cls(comps, **keep)


def _width(ids: np.ndarray, scores: np.ndarray, k: int, vocab: np.ndarray) -> SearchResults:
    """Results exactly ``k`` wide: cut, or padded (-1, 0) where fusion or a PRF run gave fewer."""
    ids, scores = ids[:, :k], scores[:, :k]
    pad = ((0, 0), (0, k - ids.shape[1]))
    return SearchResults(np.pad(ids, pad, constant_values=-1), np.pad(scores, pad), vocab)


def _shared_one(res: SearchResults, mapping: np.ndarray) -> Arrays:
    return np.where(res.ids >= 0, mapping[np.maximum(res.ids, 0)], -1), res.scores.astype(np.float64)
