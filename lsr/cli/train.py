"""``lsr train``: registered on :func:`lsr.cli.main`."""
from __future__ import annotations
