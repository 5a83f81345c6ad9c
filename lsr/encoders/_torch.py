"""Shared torch helpers for the neural encoders: imports, device and dtype choice, threads, batching.

Nothing here imports torch at module import time; every helper that needs it imports it inside,
so ``import lsr`` (and the inference-free query path) stays torch-free.

>>> length_sorted_batches([3, 9, 5, 1], batch_size=2)
[array([1, 2]), array([0, 3])]
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
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
