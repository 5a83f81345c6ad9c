"""Typed options of every retriever: one dataclass each, shared by the Python API and the CLI.

The defaults live here and nowhere else. ``None`` means "the model's own value" (a
sentence-transformers ``max_seq_length``, the tokenizer's limit), never "unset so take some
other default": ``0`` is a value like any other and is checked as one.

The CLI turns each field into one option (``doc_max_length`` -> ``--doc-max-length``) and
builds the dataclass of the chosen retriever from the options the user gave; an option that is
no field of that retriever is refused.

>>> BM25Options(k1=0).k1
0
>>> SpladeOptions(model="naver/splade-v3").query_max_length
64
>>> BM25Options(k1=-1)
Traceback (most recent call last):
...
ValueError: k1 must be >= 0, got -1
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BM25Options", "SpladeOptions", "InferenceFreeOptions", "DenseOptions", "MaxSimOptions", "MuveraOptions",
    "HybridOptions", "INDEX_TYPES", "PRF_MODES", "OPTIONS", "option_fields", "parse_weights",
]

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
PRF_MODES = ("none", "before", "after", "both")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _opt(default: Any, help: str, *, minimum: float | None = None, choices: tuple[str, ...] | None = None,
         short: str | None = None, kind: type | None = None) -> Any:
    """A dataclass field with what the CLI needs to offer it (help, bounds, choices, short flag)."""
    return field(default=default, metadata={"help": help, "min": minimum, "choices": choices, "short": short,
                                            "kind": kind})


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, paths as strings: what JSON and the checks read."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    return value


def _check(options: Any) -> None:
    """Bounds and choices of every field (the CLI and the Python API refuse the same values)."""
    for f in dataclasses.fields(options):
        value = _plain(getattr(options, f.name))
        object.__setattr__(options, f.name, value)
        if value is None:
            continue
        minimum, choices = f.metadata.get("min"), f.metadata.get("choices")
        kind = f.metadata.get("kind")
        if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        if kind in (int, float) and not math.isfinite(value):  # nan passes every bound check
            raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if kind is int and value != int(value):
            raise ValueError(f"{f.name} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{f.name} must be >= {minimum:g}, got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


class _Options:
    def __post_init__(self) -> None:
        _check(self)
        if hasattr(self, "model") and not self.model:  # every learned retriever needs its model
            raise ValueError("this retriever needs --model (a model directory or Hugging Face hub id)")

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict (what ``config.json`` records)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _model(help: str = "Model directory or Hugging Face hub id.") -> Any:
    return _opt(None, help, short="-m")


# ---------------------------------------------------------------------------- sparse
@dataclass(frozen=True)
class BM25Options(_Options):
    """BM25 with Anserini's defaults (Lucene analyzer and length norms)."""

    k1: float = _opt(0.9, "BM25 k1 (term-frequency saturation).", minimum=0, kind=float)
    b: float = _opt(0.4, "BM25 b (length normalisation), in [0, 1].", minimum=0, kind=float)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.b > 1:
            raise ValueError(f"b must lie in [0, 1], got {self.b!r}")


@dataclass(frozen=True)
class SpladeOptions(_Options):
    """SPLADE documents and queries through the same masked-LM model.

    ``doc_max_length`` 256 / ``query_max_length`` 64 are the lengths SPLADE models are trained
    with (the checkpoints carry no sentence-transformers length of their own).
    """

    model: str | None = _model()
    doc_max_length: int | None = _opt(256, "Document truncation in tokens.",
                                      minimum=3, kind=int)
    query_max_length: int | None = _opt(64, "Query truncation in tokens.",
                                        minimum=3, kind=int)
    batch_size: int | None = _opt(None, "Encoding batch size (default: 32 on CPU, 128 on GPU).", minimum=1,
                                  kind=int)
    device: str | None = _opt(None, "torch device (default: cuda if available, else cpu).")
    torch_threads: int | None = _opt(None, "torch CPU threads for encoding (default: torch's).", minimum=1,
                                     kind=int)
    precision: str = _opt("auto", "auto: exact fp32 on CPU, bf16/fp16 autocast on GPU.", choices=PRECISIONS)
    top_k: int | None = _opt(None, "Keep each document's top-k terms (default: all).", minimum=1, kind=int)
    min_weight: float = _opt(0.0, "Drop document weights below this.", minimum=0, kind=float)
    doc_vectors: str | None = _opt(None, "Index these `lsr encode` shards instead of encoding the corpus.")

    def encoder_args(self) -> dict[str, Any]:
        """Keyword arguments of the encoder (everything but the model and the shards)."""
        skip = {"model", "doc_vectors", "torch_threads", "idf"}
        args = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {**args, "threads": self.torch_threads}


@dataclass(frozen=True)
class InferenceFreeOptions(SpladeOptions):
    """Inference-free: documents through the model, queries tokenised and weighted by an IDF table.

    A query needs no model, so by default it is not truncated below the tokenizer's limit; a
    document is cut at the length the model declares (``sentence_bert_config.json``: ``lsr train``
    writes the one it trained with), else at 256.
    """

    doc_max_length: int | None = _opt(None, "Document truncation in tokens (default: the model's "
                                      "sentence_bert_config.json max_seq_length, else 256).", minimum=3, kind=int)
    query_max_length: int | None = _opt(None, "Query truncation in tokens.",
                                        minimum=3, kind=int)
    idf: str | None = _opt(None, "Query IDF table (default: the model directory's idf.json).")


# ---------------------------------------------------------------------------- dense and multi-vector
@dataclass(frozen=True)
class DenseOptions(_Options):
    """A bi-encoder (sentence-transformers layout) over a FAISS index."""

    model: str | None = _model()
    doc_max_length: int | None = _opt(None, "Document truncation in tokens.",
                                      minimum=1, kind=int)
    query_max_length: int | None = _opt(None, "Query truncation in tokens.",
                                        minimum=1, kind=int)
    batch_size: int | None = _opt(None, "Encoding batch size (default: 32 on CPU, 128 on GPU).", minimum=1, kind=int)
    device: str | None = _opt(None, "torch device (default: cuda if available, else cpu).")
    embedding_cache: str | None = _opt(None, "Directory caching encodings by content hash (reruns are free).")
    index_type: str = _opt("flat", "FAISS index: flat (exact inner product), hnsw, ivf, ivfpq.",
                           choices=INDEX_TYPES)

    def encoder_args(self) -> dict[str, Any]:
        args = {"doc_max_length": self.doc_max_length, "query_max_length": self.query_max_length,
                "device": self.device, "cache_dir": self.embedding_cache}
        if self.batch_size is not None:
            args["batch_size"] = self.batch_size
        return args


@dataclass(frozen=True)
class MaxSimOptions(_Options):
    """Token vectors (ColBERT-style) scored by exact brute-force MaxSim."""

    model: str | None = _model()
    doc_max_length: int | None = _opt(None, "Document truncation in tokens.", minimum=1,
                                      kind=int)
    query_max_length: int | None = _opt(None, "Query truncation in tokens.", minimum=1,
                                        kind=int)
    batch_size: int | None = _opt(None, "Encoding batch size (default: 32 on CPU, 128 on GPU).", minimum=1, kind=int)
    device: str | None = _opt(None, "torch device (default: cuda if available, else cpu).")
    embedding_cache: str | None = _opt(None, "Directory caching encodings by content hash (reruns are free).")

    def encoder_args(self) -> dict[str, Any]:
        return DenseOptions.encoder_args(self)  # type: ignore[arg-type]  (same encoder fields)


@dataclass(frozen=True)
class MuveraOptions(MaxSimOptions):
    """MUVERA: fixed-dimensional encodings in FAISS, candidates re-ranked by exact MaxSim."""

    fde_reps: int | None = _opt(None, "FDE repetitions R (default: FDEConfig's 10).", minimum=1, kind=int)
    fde_k_sim: int | None = _opt(None, "FDE SimHash bits k_sim (default: FDEConfig's 3).", minimum=0, kind=int)
    fde_d_proj: int | None = _opt(None, "FDE inner projection dimension, 0 = identity (default: 128).",
                                  minimum=0, kind=int)
    fde_final_dim: int | None = _opt(None, "FDE final Count-sketch dimension (default: none).", minimum=1,
                                     kind=int)
    candidates: int = _opt(50, "FDE candidates re-ranked by exact MaxSim.", minimum=1, kind=int)
    index_type: str = _opt("flat", "FAISS index of the FDEs: flat, hnsw, ivf, ivfpq.", choices=INDEX_TYPES)

    def fde_args(self) -> dict[str, Any]:
        """FDEConfig fields the user set (``fde_d_proj`` 0 = identity projection)."""
        fde = {k: getattr(self, f"fde_{k}") for k in ("k_sim", "d_proj", "reps", "final_dim")}
        fde = {k: v for k, v in fde.items() if v is not None}
        if fde.get("d_proj") == 0:
            fde["d_proj"] = None
        return fde


# ---------------------------------------------------------------------------- hybrid
@dataclass(frozen=True)
class HybridOptions(_Options):
    """Component retrievers fused into one ranking; the other options go to the components."""

    components: str | None = _opt(None, "Components as name[=model], comma-separated, e.g. "
                                        "bm25,splade=models/splade-tiny,dense=models/all-MiniLM-L6-v2.")
    norm: str = _opt("min-max", "Score normaliser (min-max, zmuv, l2, max, sum, tmm, rank, borda, none).")
    fusion: str = _opt("wsum", "Fusion method (wsum, sum, mnz, rrf, wrrf, max, min, anz, med, ...).")
    weights: tuple[float, ...] | None = _opt(None, "One weight per component, comma-separated (default: equal).")
    depth: int = _opt(1000, "Candidates taken from each component.", minimum=1, kind=int)
    prf: str = _opt("none", "Pseudo-relevance feedback and where to interpolate.", choices=PRF_MODES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.components:
            raise ValueError("a hybrid retriever needs components (e.g. bm25,splade=MODEL,dense=MODEL)")
        if self.weights is not None:
            object.__setattr__(self, "weights", parse_weights(self.weights))


def parse_weights(weights: str | Any) -> tuple[float, ...]:
    """Fusion weights as a tuple of finite floats, from numbers or the CLI's ``"0.3,0.7"``.

    >>> parse_weights("0.3, 0.7"), parse_weights([1, 2])
    ((0.3, 0.7), (1.0, 2.0))
    """
    items = weights.split(",") if isinstance(weights, str) else list(weights)
    try:
        out = tuple(float(w) for w in items)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be numbers (comma-separated in a string), got {weights!r}") from None
    if not out or not all(math.isfinite(w) for w in out):
        raise ValueError(f"weights must be finite numbers, got {weights!r}")
    return out


def option_fields(options_class: type) -> dict[str, dataclasses.Field]:
    """Field name -> field of an options dataclass (what the CLI offers for that retriever)."""
    return {f.name: f for f in dataclasses.fields(options_class)}


#: retriever name (as in :data:`lsr.retrievers.base.RETRIEVERS`) -> its options dataclass
OPTIONS: dict[str, type] = {
    "bm25": BM25Options,
    "splade": SpladeOptions,
    "inference-free": InferenceFreeOptions,
    "dense": DenseOptions,
    "maxsim": MaxSimOptions,
    "muvera": MuveraOptions,
    "hybrid": HybridOptions,
}
