"""Shared torch helpers for the neural encoders: model resolution, imports, device and dtype
choice, threads, batching.

Nothing here imports torch at module import time; every helper that needs it imports it inside,
so ``import lsr`` (and the inference-free query path) stays torch-free.

>>> length_sorted_batches([3, 9, 5, 1], batch_size=2)
[array([1, 2]), array([0, 3])]
>>> resolve_model("./no/such/model")
Traceback (most recent call last):
    ...
lsr.errors.ModelNotFoundError: ./no/such/model: no such model directory
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lsr.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

__all__ = [
    "resolve_model",
    "local_model_dir",
    "require_torch",
    "require_transformers",
    "choose_device",
    "set_threads",
    "autocast_dtype",
    "length_sorted_batches",
    "bf16_matmul_is_fast",
    "quiet_loading",
]

_ENCODERS_HINT = "install the encoder extra: pip install 'lsr[encoders]' (torch and transformers)"

# ---------------------------------------------------------------------------- model resolution
# Without a reachable hub, transformers and huggingface_hub retry each file with back-off: 24 s
# of warnings before a SPLADE model fails, 120 s for a sentence-transformers one (measured).
# One short probe of the endpoint decides instead, before any of them is called.
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"(?:[A-Za-z0-9_][\w.-]*/)?[A-Za-z0-9_][\w.-]*", re.ASCII)
_TRUE = {"1", "on", "yes", "true"}


def local_model_dir(model: str | os.PathLike) -> Path | None:
    """The local directory ``model`` names, or ``None`` when it can only be a hub id.

    Raises :class:`ModelNotFoundError` for a file, and for a missing path that is spelt like a
    local one: starting with ``.``, ``/`` or ``~``, ending with a separator, whose first
    component exists here, or that no hub id could be (``a/b/c``, spaces, ``..``).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{text}: a model must be a directory or a hub id, not a file")
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    first = re.split("|".join(map(re.escape, seps)), text, maxsplit=1)[0]
    local = (text.startswith((".", "~")) or text[:1] in seps or text[-1:] in seps
             or (len(first) < len(text) and bool(first) and Path(first).exists())
             or not _HUB_ID.fullmatch(text) or "--" in text or ".." in text or len(text) > 96)
    if local:
        raise ModelNotFoundError(f"{text}: no such model directory")
    return None


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now, or as huggingface_hub read them at import
    (it then refuses every request itself)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers requires it
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _hub_endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return endpoint.rstrip("/")


def _hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether ``endpoint`` answers HTTP at all (any status), through huggingface_hub's own
    session so that proxy settings apply."""
    try:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint, timeout=timeout)
    except Exception as exc:  # connection refused, DNS, timeout, proxy: all mean "unreachable"
        logger.debug("hub %s unreachable: %s: %s", endpoint, type(exc).__name__, exc)
        return False
    return True


def _cached_snapshot(repo_id: str) -> str | None:
    """The cached snapshot directory of ``repo_id`` (no network), or ``None``."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or huggingface_hub missing
        return None
    return str(folder) if Path(folder).is_dir() else None


def resolve_model(model: str | os.PathLike) -> str:
    """Where to load ``model`` from, decided in at most a few seconds.

    A local directory gives its absolute path. A hub id gives itself when the hub answers, or its
    cached snapshot directory when the hub cannot be reached (or ``HF_HUB_OFFLINE`` is set), so
    nothing downstream waits on network retries. Otherwise :class:`ModelNotFoundError`, one line
    that names the model (see :func:`local_model_dir` for what counts as a local path).
    """
    local = local_model_dir(model)
    if local is not None:
        return str(local.resolve())
    repo_id = str(model)
    offline = _hub_offline()
    endpoint = "" if offline else _hub_endpoint()
    if not offline and _hub_reachable(endpoint):
        return repo_id
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        logger.info("%s: hub %s, using the cached snapshot %s", repo_id,
                    "offline (HF_HUB_OFFLINE)" if offline else f"{endpoint} unreachable", cached)
        return cached
    hub = "HF_HUB_OFFLINE is set" if offline else f"the Hugging Face hub ({endpoint}) cannot be reached"
    raise ModelNotFoundError(f"{repo_id}: not a local directory, not in the Hugging Face cache, and {hub}; "
                             "pass a local model directory")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" bar while a model loads (library calls stay quiet);
    the user's own progress-bar setting is restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def require_torch() -> Any:
    """Import torch or raise ImportError with the install hint."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"this encoder needs torch; {_ENCODERS_HINT}") from exc
    return torch


def require_transformers() -> Any:
    """Import transformers or raise ImportError with the install hint."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"this encoder needs transformers; {_ENCODERS_HINT}") from exc
    return transformers


def choose_device(device: str | None = None) -> Any:
    """``torch.device(device)``; by default CUDA when available, else CPU."""
    torch = require_torch()
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"invalid torch device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (``None`` leaves torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch = require_torch()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def autocast_dtype(device: Any, precision: str) -> Any:
    """The autocast dtype for ``precision`` ("fp32", "bf16", "fp16", "auto") on ``device``, or None.

    ``auto`` means bf16 on CUDA devices that support it (fp16 otherwise) and no autocast on CPU,
    where lsr keeps fp32 and speeds up the MLM head exactly instead (see ``splade.py``).
    """
    torch = require_torch()
    if precision not in {"auto", "fp32", "bf16", "fp16"}:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Positions grouped into batches of similar length (longest first, ties in input order).

    Padding to the longest sequence of a batch then wastes little work; callers put results back
    with the positions, so the output order is the input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    return [order[s:s + batch_size] for s in range(0, order.size, batch_size)]


@functools.lru_cache(maxsize=None)
def bf16_matmul_is_fast(threads: int) -> bool:
    """Whether a bf16 matmul beats fp32 by >= 1.5x on this CPU (measured once per thread count).

    The SPLADE head uses bf16 only to *screen* vocabulary entries (exact fp32 recomputation
    follows), so this is a pure speed question: CPUs with AVX512-BF16/AMX win 2-3x, others lose.
    """
    import time

    torch = require_torch()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(256, 128, generator=g)
    w = torch.randn(8192, 128, generator=g)
    hb, wb = h.bfloat16(), w.bfloat16()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.inference_mode():
        fp32 = best(lambda: h @ w.T)
        bf16 = best(lambda: hb @ wb.T)
    fast = bf16 * 1.5 < fp32
    logger.debug("bf16 matmul %.2fms vs fp32 %.2fms: bf16 screening %s", bf16 * 1e3, fp32 * 1e3,
                 "on" if fast else "off")
    return fast
