"""Multi-vector (ColBERT-style) encoder: one L2-normalised vector per token (torch imported lazily).

Two modes, chosen from the checkpoint:

* ``colbert``: a ColBERT checkpoint carrying the linear projection layer, either colbert-ir
  style (``linear.weight`` next to the ``bert.*`` weights, settings in ``artifact.metadata``)
  or PyLate style (a sentence-transformers ``Dense`` module such as ``1_Dense/``, settings in
  ``config_sentence_transformers.json``). Queries get the query marker after ``[CLS]`` and are
  padded with ``[MASK]`` to a fixed ``query_max_length`` (query augmentation; mask positions
  are not attended to unless the checkpoint says so, but their vectors are kept). Documents
  get the document marker and drop padding and punctuation tokens.
* ``tokens``: the stand-in for encoders that were not trained for late interaction (here
  MiniLM): last-layer token vectors, L2-normalised, without ``[CLS]``, ``[SEP]`` and padding.

>>> enc = MultiVectorEncoder("../shared/models/all-MiniLM-L6-v2")    # doctest: +SKIP
>>> mv = enc.encode_queries(["what causes heart disease"])           # doctest: +SKIP
>>> mv.vectors.shape, mv.offsets.tolist()                            # doctest: +SKIP
((4, 384), [0, 4])
"""
from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.encoders._torch import resolve_model
from lsr.encoders.embedding import (
    apply_dense,
    autocast,
    cache_key,
    cached_arrays,
    import_torch,
    length_batches,
    load_dense_module,
    load_state_dict,
    load_transformer,
    model_max_tokens,
    model_path,
    read_encoder_config,
    read_module_file,
    resolve_device,
)
from lsr.types import MultiVectors

logger = logging.getLogger(__name__)

__all__ = ["MultiVectorEncoder", "MODES"]

MODES = ("colbert", "tokens")
ENCODER_CONFIG = "encoder.json"


def _colbert_ir_linear(model: str) -> Any | None:
    """``linear.weight`` of a colbert-ir checkpoint, or ``None``."""
    local = model_path(model)
    if local is None:
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = local / name
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                if "linear.weight" not in fh.keys():
                    return None
                return fh.get_tensor("linear.weight").float()
        state = load_state_dict(f)
        w = state.get("linear.weight")
        return None if w is None else w.float()
    return None


class MultiVectorEncoder:
    """Text to a set of token vectors (:class:`~lsr.index.maxsim.MultiVectors`).

    Args:
        model: model directory or hub id.
        mode: ``colbert`` or ``tokens``; default ``colbert`` when the checkpoint has a projection.
        query_max_length / doc_max_length: token limits (colbert default: the checkpoint's).
        query_augmentation: pad queries with ``[MASK]`` to ``query_max_length`` (colbert default on).
        skip_punctuation: drop punctuation tokens from documents (colbert default on).
        batch_size, device, cache_dir: as for :class:`~lsr.encoders.embedding.DenseEncoder`.

    ``encode_documents`` returns float16 vectors (the storage precision), ``encode_queries`` float32.
    """

    name = "multivector"

    def __init__(self, model: str | os.PathLike, mode: str | None = None, query_max_length: int | None = None,
                 doc_max_length: int | None = None, query_augmentation: bool | None = None,
                 skip_punctuation: bool | None = None, batch_size: int = 32, device: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.model = str(model)  # what config() records; files are read from the resolved source
        self._source = source = resolve_model(model)
        self.cache_dir = cache_dir
        self.device = resolve_device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self._tokenizer, self._net = load_transformer(source, self.device)
        # ---- find the projection (colbert-ir linear.weight or a PyLate Dense module)
        self._dense: dict[str, Any] | None = None
        settings: dict[str, Any] = {}
        modules = read_module_file(source, "modules.json") or []
        dense_dirs = [m.get("path") for m in modules if isinstance(m, dict)
                      and str(m.get("type", "")).endswith(".Dense")]
        if dense_dirs:  # PyLate
            self._dense = load_dense_module(None, source, dense_dirs[0])
            st = read_module_file(source, "config_sentence_transformers.json") or {}
            settings = {"query_marker": st.get("query_prefix"), "doc_marker": st.get("document_prefix"),
                        "query_max_length": st.get("query_length"), "doc_max_length": st.get("document_length"),
                        "query_augmentation": st.get("do_query_expansion", True),
                        "attend_to_mask": st.get("attend_to_expansion_tokens", False),
                        "skiplist": st.get("skiplist_words")}
            self.checkpoint = "pylate"
        else:
            linear = _colbert_ir_linear(source)
            if linear is not None:
                self._dense = {"weight": linear, "bias": None, "activation": "Identity"}
                meta = read_module_file(source, "artifact.metadata") or {}
                settings = {"query_marker": meta.get("query_token_id", "[unused0]"),
                            "doc_marker": meta.get("doc_token_id", "[unused1]"),
                            "query_max_length": meta.get("query_maxlen", 32),
                            "doc_max_length": meta.get("doc_maxlen", 180),
                            "query_augmentation": True,
                            "attend_to_mask": meta.get("attend_to_mask_tokens", False),
                            "skiplist": None if meta.get("mask_punctuation", True) else []}
                self.checkpoint = "colbert-ir"
            else:
                self.checkpoint = "encoder"
        if mode is None:
            mode = "colbert" if self._dense is not None else "tokens"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "colbert" and self._dense is None:
            raise ValueError(f"{model}: mode 'colbert' needs a checkpoint with a projection layer "
                             "(colbert-ir linear.weight or a PyLate Dense module)")
        self.mode = mode
        colbert = mode == "colbert"
        max_pos = int(getattr(self._net.config, "max_position_embeddings", 512))
        self.query_max_length = int(query_max_length or settings.get("query_max_length") or (32 if colbert else 64))
        self.doc_max_length = int(doc_max_length or settings.get("doc_max_length") or min(max_pos, 256))
        self._max_tokens = model_max_tokens(self._tokenizer, self._net)
        if max(self.query_max_length, self.doc_max_length) > self._max_tokens:
            logger.warning("%s: truncating to the model's %d positions", self.model, self._max_tokens)
        self.query_augmentation = bool(colbert and settings.get("query_augmentation", True)
                                       if query_augmentation is None else query_augmentation)
        self.attend_to_mask = bool(settings.get("attend_to_mask", False))
        self.skip_punctuation = bool(colbert and settings.get("skiplist", None) != []
                                     if skip_punctuation is None else skip_punctuation)
        tok = self._tokenizer
        self._query_marker = self._token_id(settings.get("query_marker")) if colbert else None
        self._doc_marker = self._token_id(settings.get("doc_marker")) if colbert else None
        words = settings.get("skiplist") or list(string.punctuation)
        self._skip_ids = np.array(sorted({i for w in words for i in tok.encode(w, add_special_tokens=False)[:1]}),
                                  dtype=np.int64)
        self._special_ids = np.array(sorted({i for i in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id,
                                                         tok.bos_token_id, tok.eos_token_id) if i is not None}),
                                     dtype=np.int64)
        if self.query_augmentation and tok.mask_token_id is None:
            raise ValueError(f"{model}: query augmentation needs a tokenizer with a mask token")
        self.dim = int(self._dense["weight"].shape[0] if colbert else self._net.config.hidden_size)

    def _token_id(self, marker: str | None) -> int | None:
        """Id of a marker token if the tokenizer has it as one token, else ``None``."""
        if not marker:
            return None
        tok = self._tokenizer
        for cand in (marker, marker.strip()):
            i = tok.convert_tokens_to_ids(cand)
            if i is not None and i != tok.unk_token_id:
                return int(i)
        return None

    def __repr__(self) -> str:
        return (f"MultiVectorEncoder({self.model!r}, mode={self.mode!r}, checkpoint={self.checkpoint!r}, "
                f"dim={self.dim}, device={self.device!r})")

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None,
                       show_progress: bool = False) -> MultiVectors:
        """Token vectors of each query (float32)."""
        return self._cached("queries", texts, batch_size, show_progress).astype(np.float32)

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         show_progress: bool = False) -> MultiVectors:
        """Token vectors of each document (float16)."""
        return self._cached("documents", texts, batch_size, show_progress)

    def _cached(self, kind: str, texts: Sequence[str], batch_size: int | None, show_progress: bool) -> MultiVectors:
        key = cache_key(self.config(), kind, texts) if self.cache_dir is not None else ""

        def compute() -> tuple[np.ndarray, np.ndarray]:
            mv = self._encode(texts, kind == "queries", batch_size, show_progress)
            return mv.vectors, mv.offsets

        vectors, offsets = cached_arrays(self.cache_dir, key, ["tokens", "offsets"], compute)
        return MultiVectors(vectors, np.asarray(offsets, dtype=np.int64))

    def _tokenize(self, texts: Sequence[str], query: bool) -> list[list[int]]:
        """Token ids with special tokens and the marker (after the first token) inserted."""
        max_len = min(self.query_max_length if query else self.doc_max_length, self._max_tokens)
        marker = self._query_marker if query else self._doc_marker
        budget = max_len - (1 if marker is not None else 0)
        if len(texts) == 0:  # tokenizers refuse an empty batch
            return []
        ids = self._tokenizer([str(t) for t in texts], truncation=True, max_length=budget,
                              padding=False)["input_ids"]
        if marker is not None:
            ids = [x[:1] + [marker] + x[1:] for x in ids]
        return ids

    def _encode(self, texts: Sequence[str], query: bool, batch_size: int | None,
                show_progress: bool) -> MultiVectors:
        torch = import_torch()
        from tqdm.auto import tqdm

        ids_list = self._tokenize(texts, query)
        augment = query and self.query_augmentation
        width_fixed = min(self.query_max_length, self._max_tokens) if augment else None
        pad_id = self._tokenizer.pad_token_id or 0
        mask_id = self._tokenizer.mask_token_id
        lengths = [len(x) for x in ids_list]
        per_text: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(ids_list)
        out_dtype = np.float32 if query else np.float16
        with torch.inference_mode(), tqdm(total=len(ids_list), desc="encode", unit="text",
                                          disable=not show_progress) as bar:
            for pos in length_batches(lengths, batch_size or self.batch_size):
                width = width_fixed or max(lengths[i] for i in pos)
                ids = np.full((pos.size, width), mask_id if augment else pad_id, dtype=np.int64)
                att = np.zeros((pos.size, width), dtype=np.int64)
                for r, i in enumerate(pos):
                    ids[r, :lengths[i]] = ids_list[i]
                    att[r, :lengths[i]] = 1
                # with augmentation every position (tokens and [MASK] padding) yields a query vector
                keep = np.ones_like(att, dtype=bool) if augment else att.astype(bool)
                if augment and self.attend_to_mask:
                    att[:] = 1
                if self.mode == "tokens":
                    keep &= ~np.isin(ids, self._special_ids)
                elif not query and self.skip_punctuation:
                    keep &= ~np.isin(ids, self._skip_ids)
                ids_t = torch.from_numpy(ids).to(self.device)
                att_t = torch.from_numpy(att).to(self.device)
                with autocast(self.device, torch):
                    hidden = self._net(input_ids=ids_t, attention_mask=att_t).last_hidden_state
                hidden = hidden.float()
                if self.mode == "colbert":
                    hidden = apply_dense(hidden, self._dense)
                hidden = torch.nn.functional.normalize(hidden, dim=-1).cpu().numpy()
                for r, i in enumerate(pos):
                    per_text[i] = hidden[r][keep[r]].astype(out_dtype)
                bar.update(pos.size)
        return MultiVectors.from_list(per_text, dtype=out_dtype, dim=self.dim)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"type": "multivector", "model": self.model, "mode": self.mode, "checkpoint": self.checkpoint,
                "query_max_length": self.query_max_length, "doc_max_length": self.doc_max_length,
                "query_augmentation": self.query_augmentation, "skip_punctuation": self.skip_punctuation,
                "dim": self.dim, "batch_size": self.batch_size}

    def save(self, directory: str | os.PathLike) -> None:
        """Write the settings (the model is referenced by path or hub id, not copied)."""
        Path(directory, ENCODER_CONFIG).write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None,
             cache_dir: str | os.PathLike | None = None) -> "MultiVectorEncoder":
        cfg = read_encoder_config(directory, ("model", "mode", "query_max_length", "doc_max_length",
                                              "query_augmentation", "skip_punctuation"))
        return cls(cfg["model"], mode=cfg["mode"], query_max_length=cfg["query_max_length"],
                   doc_max_length=cfg["doc_max_length"], query_augmentation=cfg["query_augmentation"],
                   skip_punctuation=cfg["skip_punctuation"], batch_size=cfg.get("batch_size", 32),
                   device=device, cache_dir=cache_dir)


def encode_dense_and_tokens(dense: Any, multi: MultiVectorEncoder, texts: Sequence[str], kind: str = "documents",
                            batch_size: int | None = None,
                            show_progress: bool = False) -> tuple[np.ndarray, MultiVectors]:
    """Pooled dense vectors and stand-in token vectors of the same model from one forward pass.

    Gives exactly what ``dense.encode_<kind>`` and ``multi.encode_<kind>`` give (and fills both
    encoders' embedding caches), for half the encoding time. Needs the same model and length
    limit, ``multi`` in ``tokens`` mode, no dense prefix and no Dense module.
    """
    if kind not in ("queries", "documents"):
        raise ValueError(f"kind must be 'queries' or 'documents', got {kind!r}")
    query = kind == "queries"
    d_cfg, m_cfg = dense.config(), multi.config()
    prefix = dense.query_prefix if query else dense.document_prefix
    d_len = dense.query_max_length if query else dense.doc_max_length
    m_len = multi.query_max_length if query else multi.doc_max_length
    same_model = cache_key({"model": d_cfg["model"]}, "", []) == cache_key({"model": m_cfg["model"]}, "", [])
    if not (same_model and multi.mode == "tokens" and not prefix and d_len == m_len and dense._dense is None):
        raise ValueError("encode_dense_and_tokens needs one model, the same length limit, multi-vector "
                         "mode 'tokens' and a dense encoder without prefix or Dense module")
    torch = import_torch()
    from tqdm.auto import tqdm

    def compute() -> tuple[np.ndarray, MultiVectors]:
        ids_list = multi._tokenize(texts, query)
        lengths = [len(x) for x in ids_list]
        pooled = np.zeros((len(ids_list), dense.dim), dtype=np.float32)
        per_text: list[np.ndarray] = [np.zeros((0, multi.dim), np.float32)] * len(ids_list)
        out_dtype = np.float32 if query else np.float16
        pad_id = multi._tokenizer.pad_token_id or 0
        with torch.inference_mode(), tqdm(total=len(ids_list), desc="encode", unit="text",
                                          disable=not show_progress) as bar:
            for pos in length_batches(lengths, batch_size or multi.batch_size):
                width = max(lengths[i] for i in pos)
                ids = np.full((pos.size, width), pad_id, dtype=np.int64)
                att = np.zeros((pos.size, width), dtype=np.int64)
                for r, i in enumerate(pos):
                    ids[r, :lengths[i]] = ids_list[i]
                    att[r, :lengths[i]] = 1
                keep = att.astype(bool) & ~np.isin(ids, multi._special_ids)
                ids_t = torch.from_numpy(ids).to(multi.device)
                att_t = torch.from_numpy(att).to(multi.device)
                with autocast(multi.device, torch):
                    hidden = multi._net(input_ids=ids_t, attention_mask=att_t).last_hidden_state
                hidden = hidden.float()
                vec = dense._pool(hidden, att_t)
                if dense.normalize:
                    vec = torch.nn.functional.normalize(vec, dim=-1)
                pooled[pos] = vec.cpu().numpy()
                tokens = torch.nn.functional.normalize(hidden, dim=-1).cpu().numpy()
                for r, i in enumerate(pos):
                    per_text[i] = tokens[r][keep[r]].astype(out_dtype)
                bar.update(pos.size)
        return pooled, MultiVectors.from_list(per_text, dtype=out_dtype, dim=multi.dim)

    d_key = cache_key(d_cfg, kind, texts) if dense.cache_dir is not None else ""
    m_key = cache_key(m_cfg, kind, texts) if multi.cache_dir is not None else ""
    result: dict[str, Any] = {}

    def both() -> tuple[np.ndarray, MultiVectors]:
        if "r" not in result:
            result["r"] = compute()
        return result["r"]

    (pooled,) = cached_arrays(dense.cache_dir, d_key, ["dense"], lambda: (both()[0],))
    vectors, offsets = cached_arrays(multi.cache_dir, m_key, ["tokens", "offsets"],
                                     lambda: (both()[1].vectors, both()[1].offsets))
    return np.asarray(pooled, dtype=np.float32), MultiVectors(vectors, np.asarray(offsets, dtype=np.int64))
