"""Dense bi-encoder in the sentence-transformers directory layout (torch imported lazily).

A model directory (or hub id) holds a transformers checkpoint plus the sentence-transformers
module files: ``modules.json`` (which modules run: Transformer, Pooling, Dense, Normalize),
``1_Pooling/config.json`` (``mean``, ``cls`` or ``lasttoken`` pooling),
``sentence_bert_config.json`` (``max_seq_length``) and ``config_sentence_transformers.json``
(``prompts`` with query/document prefixes for e5/bge-style models). Anything missing falls
back to mean pooling without normalisation, no prefixes.

Weights stored in fp16 are run in fp32 on CPU (fp16 matmuls are slow there); on CUDA the
forward pass runs under autocast in bf16 (fp16 where bf16 is unsupported). Texts are
batched by token length so padding is minimal; outputs come back in input order.

>>> enc = DenseEncoder("../shared/models/all-MiniLM-L6-v2")       # doctest: +SKIP
>>> enc.encode_queries(["what causes heart disease"]).shape         # doctest: +SKIP
(1, 384)
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lsr.encoders._torch import local_model_dir, resolve_model

logger = logging.getLogger(__name__)

__all__ = ["DenseEncoder", "POOLINGS"]

POOLINGS = ("mean", "cls", "lasttoken")
_INSTALL_HINT = "dense encoders need torch and transformers: pip install 'lsr[encoders]'"
ENCODER_CONFIG = "encoder.json"


# ---------------------------------------------------------------------------- shared helpers
def import_torch() -> Any:
    """Import torch with an install hint when it is missing."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from exc
    return torch


def resolve_device(device: str | None) -> str:
    """``device`` or, when ``None``, ``cuda`` if available else ``cpu``."""
    if device:
        return str(device)
    torch = import_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_path(model: str | os.PathLike) -> Path | None:
    """The local directory of ``model``, or ``None`` for a hub id; a file or a missing path spelt
    like a local one raises :class:`~lsr.errors.ModelNotFoundError` (see ``local_model_dir``)."""
    return local_model_dir(model)


def read_module_file(model: str | os.PathLike, name: str) -> dict[str, Any] | list | None:
    """Read a JSON file of a model directory or hub repo; ``None`` when it does not exist."""
    local = model_path(model)
    if local is not None:
        f = local / name
        if not f.is_file():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            f = Path(hf_hub_download(str(model), name))
        except Exception:  # missing file, offline, no such repo: treat as absent
            return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f}: unreadable JSON ({exc})") from exc


def read_encoder_config(directory: str | os.PathLike, required: Sequence[str]) -> dict[str, Any]:
    """``directory/encoder.json`` as a dict; a missing, unreadable or incomplete file raises
    :class:`~lsr.io.manifest.IndexFormatError` naming the file and the missing fields."""
    from lsr.errors import IndexFormatError

    path = Path(directory, ENCODER_CONFIG)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: missing (encoder settings)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise IndexFormatError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    missing = [key for key in required if key not in cfg]
    if missing:
        raise IndexFormatError(f"{path}: missing field(s) {', '.join(missing)}")
    return cfg


def load_transformer(model: str | os.PathLike, device: str) -> tuple[Any, Any]:
    """(tokenizer, AutoModel) in eval mode on ``device``, weights upcast to fp32."""
    torch = import_torch()
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover
        raise ImportError(_INSTALL_HINT) from exc
    local = model_path(model)  # a missing local path fails here, naming it
    if local is not None and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{local}: not a transformers model directory (no config.json)")
    source = str(local) if local is not None else str(model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    from lsr.encoders._torch import quiet_loading

    with quiet_loading():
        net = AutoModel.from_pretrained(source, dtype=torch.float32)
    net.eval().to(device)
    return tokenizer, net


def model_max_tokens(tokenizer: Any, net: Any) -> int:
    """Longest input the model takes: its position embeddings, or the tokenizer's declared
    maximum where smaller (RoBERTa-style offsets), as sentence-transformers bounds it."""
    limit = int(getattr(net.config, "max_position_embeddings", 0) or 1 << 30)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < limit:
        limit = declared
    return limit


def load_dense_module(directory: str | os.PathLike | None, model: str, subdir: str) -> dict[str, Any] | None:
    """A sentence-transformers ``Dense`` module (``subdir/config.json`` + weights) as tensors."""
    cfg = read_module_file(model, f"{subdir}/config.json")
    if cfg is None:
        return None
    torch = import_torch()
    local = model_path(model)
    base = (local / subdir) if local is not None else None
    if base is None:
        from huggingface_hub import hf_hub_download

        try:
            weights = Path(hf_hub_download(model, f"{subdir}/model.safetensors"))
        except Exception:
            weights = Path(hf_hub_download(model, f"{subdir}/pytorch_model.bin"))
    else:
        weights = base / "model.safetensors"
        if not weights.is_file():
            weights = base / "pytorch_model.bin"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights.parent}: Dense module without model.safetensors or pytorch_model.bin")
    state = load_state_dict(weights)
    act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity")).rsplit(".", 1)[-1]
    if act not in ("Identity", "Tanh"):
        raise ValueError(f"{weights.parent}/config.json: unsupported activation_function {act!r}")
    w = state.get("linear.weight")
    if w is None:
        raise ValueError(f"{weights}: no 'linear.weight' tensor")
    return {"weight": w.to(torch.float32), "bias": state.get("linear.bias"), "activation": act}


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` or ``.bin`` file (no pickle code execution)."""
    torch = import_torch()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def apply_dense(x: Any, dense: dict[str, Any]) -> Any:
    """Apply a loaded Dense module to the last axis of ``x``."""
    torch = import_torch()
    w = dense["weight"].to(x.device, x.dtype)
    b = dense["bias"].to(x.device, x.dtype) if dense.get("bias") is not None else None
    y = torch.nn.functional.linear(x, w, b)
    return torch.tanh(y) if dense["activation"] == "Tanh" else y


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Positions grouped into batches of similar length (longest first)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for s in range(0, order.size, batch_size):
        yield order[s:s + batch_size]


def autocast(device: str, torch: Any) -> Any:
    """bf16 (or fp16) autocast on CUDA, a no-op context elsewhere."""
    import contextlib

    if str(device).startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def cache_key(config: dict[str, Any], kind: str, texts: Sequence[str]) -> str:
    """SHA-256 over an encoder's settings (batch size and device excluded), ``kind`` and the texts."""
    import hashlib

    cfg = {k: v for k, v in config.items() if k not in ("batch_size", "device")}
    local = model_path(cfg["model"]) if "model" in cfg else None
    if local is not None:  # the same directory named two ways shares its cache entries
        cfg["model"] = str(local.resolve())
    h = hashlib.sha256(json.dumps([cfg, kind], sort_keys=True).encode())
    for t in texts:
        h.update(str(t).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def cached_arrays(cache_dir: str | os.PathLike | None, key: str, names: Sequence[str],
                  compute: Any) -> tuple[np.ndarray, ...]:
    """Load ``<cache_dir>/<key>.<name>.npy`` for every name, or ``compute()`` and store them.

    The embedding cache makes re-encoding a corpus with the same model and settings free.
    Files are written under a temporary name and renamed, so a killed run leaves no half file.
    """
    if cache_dir is None:
        return tuple(compute())
    cache = Path(cache_dir)
    files = [cache / f"{key}.{n}.npy" for n in names]
    if all(f.is_file() for f in files):
        try:
            logger.info("embedding cache hit %s", key)
            return tuple(np.load(f, mmap_mode="r", allow_pickle=False) for f in files)
        except (ValueError, OSError) as exc:
            logger.warning("embedding cache %s unreadable (%s); recomputing", key, exc)
    arrays = tuple(compute())
    cache.mkdir(parents=True, exist_ok=True)
    for f, a in zip(files, arrays):
        tmp = f.with_name(f".{f.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(a), allow_pickle=False)
        os.replace(tmp, f)
    return arrays


# ---------------------------------------------------------------------------- encoder
class DenseEncoder:
    """Sentence-transformers-style bi-encoder: text to one ``float32`` vector.

    Args:
        model: model directory or hub id.
        pooling: ``mean``, ``cls`` or ``lasttoken``; default from ``1_Pooling/config.json``.
        normalize: L2-normalise outputs; default: whether ``modules.json`` lists Normalize.
        query_prefix / document_prefix: prepended text; default from the ``prompts`` of
            ``config_sentence_transformers.json`` (keys ``query`` and ``document``/``passage``).
        query_max_length / doc_max_length: truncation in tokens (default ``max_seq_length``).
        batch_size: texts per forward pass.
        device: torch device; default cuda when available.
        cache_dir: optional embedding cache directory (see :func:`cached_arrays`).
    """

    name = "dense"

    def __init__(self, model: str | os.PathLike, pooling: str | None = None, normalize: bool | None = None,
                 query_prefix: str | None = None, document_prefix: str | None = None,
                 query_max_length: int | None = None, doc_max_length: int | None = None,
                 batch_size: int = 32, device: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.model = str(model)  # what config() records; files are read from the resolved source
        self._source = source = resolve_model(model)
        self.cache_dir = cache_dir
        modules = read_module_file(source, "modules.json") or []
        if not isinstance(modules, list):
            raise ValueError(f"{model}/modules.json: expected a list of modules")
        types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
        pool_cfg = {}
        if "Pooling" in types:
            pool_cfg = read_module_file(source, f"{types['Pooling'].get('path', '1_Pooling')}/config.json") or {}
        if pooling is None:
            pooling = ("cls" if pool_cfg.get("pooling_mode_cls_token") else
                       "lasttoken" if pool_cfg.get("pooling_mode_lasttoken") else "mean")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.normalize = bool("Normalize" in types) if normalize is None else bool(normalize)
        self._dense_dir = types["Dense"].get("path") if "Dense" in types else None
        st_cfg = read_module_file(source, "config_sentence_transformers.json") or {}
        prompts = st_cfg.get("prompts") or {}
        self.query_prefix = prompts.get("query", "") if query_prefix is None else query_prefix
        self.document_prefix = (prompts.get("document", prompts.get("passage", ""))
                                if document_prefix is None else document_prefix)
        max_seq = (read_module_file(source, "sentence_bert_config.json") or {}).get("max_seq_length") or 512
        self.query_max_length = int(query_max_length or max_seq)
        self.doc_max_length = int(doc_max_length or max_seq)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self._tokenizer, self._net = load_transformer(source, self.device)
        self._max_tokens = model_max_tokens(self._tokenizer, self._net)
        if max(self.query_max_length, self.doc_max_length) > self._max_tokens:
            logger.warning("%s: truncating to the model's %d positions", self.model, self._max_tokens)
        self._dense = load_dense_module(None, source, self._dense_dir) if self._dense_dir else None
        self.dim = int(self._dense["weight"].shape[0] if self._dense else self._net.config.hidden_size)

    def __repr__(self) -> str:
        return (f"DenseEncoder({self.model!r}, pooling={self.pooling!r}, normalize={self.normalize}, "
                f"dim={self.dim}, device={self.device!r})")

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None,
                       show_progress: bool = False) -> np.ndarray:
        """``float32`` array ``(len(texts), dim)`` of query vectors."""
        return self._cached("queries", texts, self.query_prefix, self.query_max_length, batch_size, show_progress)

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         show_progress: bool = False) -> np.ndarray:
        """``float32`` array ``(len(texts), dim)`` of document vectors."""
        return self._cached("documents", texts, self.document_prefix, self.doc_max_length, batch_size,
                            show_progress)

    def _cached(self, kind: str, texts: Sequence[str], prefix: str, max_length: int, batch_size: int | None,
                show_progress: bool) -> np.ndarray:
        key = cache_key(self.config(), kind, texts) if self.cache_dir is not None else ""
        (vectors,) = cached_arrays(self.cache_dir, key, ["dense"], lambda: (
            self._encode(texts, prefix, max_length, batch_size, show_progress),))
        return np.asarray(vectors, dtype=np.float32)

    def _encode(self, texts: Sequence[str], prefix: str, max_length: int, batch_size: int | None,
                show_progress: bool) -> np.ndarray:
        torch = import_torch()
        from tqdm.auto import tqdm

        texts = [prefix + str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = self._tokenizer(texts, truncation=True, max_length=min(max_length, self._max_tokens), padding=False)
        lengths = [len(x) for x in enc["input_ids"]]
        pad_id = self._tokenizer.pad_token_id or 0
        with torch.inference_mode(), tqdm(total=len(texts), desc="encode", unit="text",
                                          disable=not show_progress) as bar:
            for pos in length_batches(lengths, batch_size or self.batch_size):
                width = max(lengths[i] for i in pos)
                ids = np.full((pos.size, width), pad_id, dtype=np.int64)
                mask = np.zeros((pos.size, width), dtype=np.int64)
                for r, i in enumerate(pos):  # right padding
                    ids[r, :lengths[i]] = enc["input_ids"][i]
                    mask[r, :lengths[i]] = 1
                ids_t = torch.from_numpy(ids).to(self.device)
                mask_t = torch.from_numpy(mask).to(self.device)
                with autocast(self.device, torch):
                    hidden = self._net(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                vec = self._pool(hidden.float(), mask_t)
                if self._dense is not None:
                    vec = apply_dense(vec, self._dense)
                if self.normalize:
                    vec = torch.nn.functional.normalize(vec, dim=-1)
                out[pos] = vec.cpu().numpy()
                bar.update(pos.size)
        return out

    def _pool(self, hidden: Any, mask: Any) -> Any:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "lasttoken":
            last = mask.sum(dim=1) - 1  # right padding: last real token
            torch = import_torch()
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"type": "dense", "model": self.model, "pooling": self.pooling, "normalize": self.normalize,
                "query_prefix": self.query_prefix, "document_prefix": self.document_prefix,
                "query_max_length": self.query_max_length, "doc_max_length": self.doc_max_length,
                "dim": self.dim, "batch_size": self.batch_size}

    def save(self, directory: str | os.PathLike) -> None:
        """Write the settings (not the weights: the model is referenced by path or hub id)."""
        Path(directory, ENCODER_CONFIG).write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None,
             cache_dir: str | os.PathLike | None = None) -> "DenseEncoder":
        cfg = read_encoder_config(directory, ("model", "pooling", "normalize", "query_prefix", "document_prefix",
                                              "query_max_length", "doc_max_length"))
        return cls(cfg["model"], pooling=cfg["pooling"], normalize=cfg["normalize"],
                   query_prefix=cfg["query_prefix"], document_prefix=cfg["document_prefix"],
                   query_max_length=cfg["query_max_length"], doc_max_length=cfg["doc_max_length"],
                   batch_size=cfg.get("batch_size", 32), device=device, cache_dir=cache_dir)
