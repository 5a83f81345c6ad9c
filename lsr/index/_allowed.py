"""The ``allowed`` document mask every index search takes (a filter's result), checked once.

Private: the indexes of :mod:`lsr.index` call :func:`check_allowed`; plain numpy, no Numba.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def check_allowed(allowed: Any, n_docs: int) -> np.ndarray | None:
    """``allowed`` as a bool array of ``n_docs`` (``None`` stays ``None``: every document).

    Accepts a bool array, or a uint8 array where non-zero means allowed, of shape ``(n_docs,)``;
    anything else raises a one-line :class:`ValueError` saying what was given."""
    if allowed is None:
        return None
    if not isinstance(allowed, np.ndarray):
        raise ValueError(f"allowed must be a numpy bool array of {n_docs} documents, got {type(allowed).__name__}")
    if allowed.dtype not in (np.bool_, np.uint8):
        raise ValueError(f"allowed must be a bool (or uint8) array, got dtype {allowed.dtype}")
    if allowed.shape != (n_docs,):
        raise ValueError(f"allowed must have shape ({n_docs},) (one entry per document), got {allowed.shape}")
    return np.ascontiguousarray(allowed if allowed.dtype == np.bool_ else allowed != 0)
