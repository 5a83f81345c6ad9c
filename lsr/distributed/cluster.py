"""Connecting to Ray: the optional import, a loopback-only local instance, or an existing cluster.

Ray is an optional dependency (``pip install 'lsr[ray]'``); nothing outside ``lsr.distributed``
imports it, and this module imports it only inside functions.

A local instance (no address given) binds every Ray process to 127.0.0.1 with the dashboard off:
a one-machine run needs no other address. Ray replaces a requested ``127.0.0.1`` by the
machine's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before ``ray`` is
imported (``ray._private.services.resolve_ip_for_localhost``, Ray 2.60), so
:func:`start_local` sets it (only when unset) for the processes it starts, and applies it to
Ray's constant when ``ray`` was imported earlier.

>>> from lsr.distributed.cluster import connect, disconnect       # doctest: +SKIP
>>> started = connect(None, num_cpus=2)                           # doctest: +SKIP
>>> disconnect(started)                                            # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["RAY_HINT", "require_ray", "connect", "disconnect", "start_local", "LOOPBACK"]

RAY_HINT = "install the ray extra: pip install 'lsr[ray]'"
LOOPBACK = "127.0.0.1"
# Read by Ray at import: without it a local node asked for 127.0.0.1 advertises the outward address.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray() -> Any:
    """Import ray, or raise ImportError naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"distributed encoding needs Ray; {RAY_HINT}") from exc
    return ray


def start_local(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Start a Ray instance on this machine, every process on 127.0.0.1, no dashboard."""
    os.environ.setdefault(_LOCAL_ONLY_ENV, "0")  # read by ray at import, and inherited by its processes
    imported = "ray" in sys.modules
    ray = require_ray()
    if imported and os.environ[_LOCAL_ONLY_ENV] == "0":
        # ray was imported before the variable was set: apply the same setting to the constant it read
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address=LOOPBACK, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    logger.info("started a local Ray instance on %s: %s", LOOPBACK, ray.cluster_resources())


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; return whether this call started it.

    Args:
        address: a cluster's address (``HOST:PORT`` of its head, or ``"auto"`` for the cluster this
            machine belongs to); ``None`` starts a local instance (:func:`start_local`). When Ray
            is already initialised in this process, that connection is used as it is.
        num_cpus: CPUs of a local instance (default: all of this machine's).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address is None:
        start_local(num_cpus=num_cpus)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
        logger.info("connected to the Ray cluster at %s: %s", address, ray.cluster_resources())
    return True


def disconnect(started: bool) -> None:
    """Shut Ray down if :func:`connect` started it (``started``); otherwise leave it running."""
    if started:
        import ray

        ray.shutdown()
