"""Where a job's Ray cluster is: the one named by ``--address`` or ``RAY_ADDRESS``, else a new local one.

Ray's own ``ray.init()`` follows a stale ``/tmp/ray/ray_current_cluster`` to a head that died without
``ray stop`` and retries it for ever; here a named cluster that does not answer fails within
``PROBE_TIMEOUT_S`` with one line naming the address and the fix. A job that starts Ray shuts it down when
it is done, so nothing is left running for the next job (or test module) in the same process.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator

import ray

LOCAL = "local"
PROBE_TIMEOUT_S = 10.0
LOCAL_OBJECT_STORE_BYTES = 512 << 20   # a small store: the embedded default needs far less, 2-core laptops have little


class ClusterUnreachable(RuntimeError):
    """The named Ray cluster did not answer; the message says which address and how to fix it."""


def resolve(address: str | None) -> tuple[str, str]:
    """(address, where it came from): the argument, else ``RAY_ADDRESS``, else ``local``."""
    if address:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return LOCAL, "default"


def _gcs_address(address: str) -> str:
    """host:port of the cluster's GCS for a ``ray.init`` address (``auto`` read from Ray's own file)."""
    if address == "auto":
        from ray._private.services import find_bootstrap_address   # the file `ray start --head` writes; ray is pinned
        found = find_bootstrap_address(None)
        if not found:
            raise ClusterUnreachable("address 'auto': no `ray start` cluster on this machine. Start one with "
                                     "`ray start --head`, or drop --address/RAY_ADDRESS to run on a new local cluster")
        return found
    return address.removeprefix("ray://")


def probe(address: str, source: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ClusterUnreachable unless something listens at ``address``'s GCS port within ``timeout_s``."""
    if address.startswith(("http://", "https://")):
        raise ClusterUnreachable(f"{source}={address!r} is a dashboard URL (what `ray job submit` takes); jobs need "
                                 "the cluster's GCS address, host:6379, or leave it unset to run locally")
    gcs = _gcs_address(address)
    host, _, port = gcs.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"{source}={address!r} is not host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterUnreachable(
            f"no Ray cluster answers at {gcs} ({source}={address}): {e}. Start it (`ray start --head`), point "
            f"{source} at a live head, or use --address {LOCAL} to run on a new local cluster") from None


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator[str]:
    """Run the body on a Ray cluster; yields where it is.

    If Ray is already initialised (a caller handing its cluster over), that cluster is used and left running.
    Otherwise the cluster named by ``address``/``RAY_ADDRESS`` is joined after a bounded reachability probe, or
    a local one is started with ``num_cpus`` (default: all) and a small object store; either way this call
    disconnects (and stops what it started) on exit, also on error.
    """
    if ray.is_initialized():
        yield "the caller's cluster"
        return
    address, source = resolve(address)
    quiet = {"log_to_driver": False}   # workers' output stays in the Ray logs; jobs print their own progress
    if address == LOCAL:
        ray.init(address=LOCAL, num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 **quiet)
    else:
        probe(address, source)
        ray.init(address=address, **quiet)
    try:
        yield address
    finally:
        ray.shutdown()


def run_job(main: Callable[[], object]) -> None:
    """A job's ``__main__``: an unreachable cluster ends it with its one-line message, not a traceback."""
    try:
        main()
    except ClusterUnreachable as e:
        sys.exit(f"error: {e}")
