"""CLI commands of live collections (``lsr add``, ``lsr delete``): registered on :func:`lsr.cli.main`."""
from __future__ import annotations
