"""Stage work spread over a Ray cluster: ``--ray`` (a local cluster started for the run) or ``--ray ADDRESS``
(an existing one, e.g. ``ray://head:10001`` or ``auto``).

Every task writes through the store, so the work is the same whether it ran here or on a worker: a caller
first runs the tasks on Ray, then runs its ordinary sequential code, which finds every build, measurement and
evaluation in the store's cache. Results are therefore identical to a sequential run by construction. Two
workers asking for the same key at once are safe: on one machine the store's lock serialises them, across
machines each writes to a temporary path and renames it into place, and both write the same bytes.

Workers must see the store at the same path (a shared filesystem across machines) and have quantlab installed
at the same version; the run's environment variables that decide results (``HF_HUB_OFFLINE``, ``QUANTLAB_*``)
are passed on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from quantlab.errors import UserError

LOCAL = "local"  # --ray with no address: a cluster started on this machine for the run


@dataclass(frozen=True)
class RayRun:
    """Where the tasks ran and how long they took (for the caller's log and the benchmarks)."""

    address: str
    workers: int
    tasks: int
    wall_s: float


def _environment() -> dict[str, str]:
    keep = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS")
    return {k: v for k, v in os.environ.items() if k in keep or k.startswith("QUANTLAB_")}


def _connect(address: str, workers: int | None):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'quantlab[ray]' (ray is in scripts/setup.sh)") from None
    if ray.is_initialized():
        return ray
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": _environment()},
        "log_to_driver": False,
        "include_dashboard": False,
    }
    try:
        if address == LOCAL:
            ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
        else:
            if workers is not None:
                raise UserError("--workers applies to a local cluster (--ray); an existing cluster has its own")
            _check_reachable(address)
            ray.init(address=address, **options)
    except UserError:
        raise
    except Exception as error:  # ConnectionError, RuntimeError: no cluster there
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--ray {address}: cannot start or reach a Ray cluster ({first[:160]})") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A one-line error at once when nothing listens at a ``host:port`` address (Ray itself retries for minutes)."""
    import socket

    host_port = address.removeprefix("ray://")
    if address == "auto" or ":" not in host_port:
        return
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise UserError(
            f"--ray {address}: no Ray cluster answers there ({reason}); start one with `ray start --head`"
        ) from None


def run_on_ray(
    function: Callable[..., Any],
    arguments: Sequence[tuple],
    address: str = LOCAL,
    workers: int | None = None,
    threads_per_task: int | None = None,
) -> tuple[list[Any], RayRun]:
    """``function(*args)`` for each of ``arguments`` as Ray tasks, results in order. A task that fails raises
    its error here (a ``UserError`` stays one line); a local cluster is shut down at the end.

    Each task computes with ``threads_per_task`` torch threads, by default this process's own count: a float32
    sum's rounding depends on how a matrix product is split over threads, so only the same count gives the very
    bytes a sequential run stores (measured: KL means differing in the 9th digit at 1 thread against 2). Ray
    schedules by tasks (one CPU each), so on a local cluster ``workers`` is how many run at once."""
    import torch

    started = time.perf_counter()
    threads = threads_per_task or torch.get_num_threads()
    ray = _connect(address, workers)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_in_worker)
        pending = [remote.remote(function, args, threads) for args in arguments]
        results = []
        for ref in pending:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayTaskError as error:
                cause = error.as_instanceof_cause()
                if isinstance(cause, UserError):
                    raise UserError(str(cause).splitlines()[0]) from None
                raise
        cluster = int(ray.cluster_resources().get("CPU", 0))
    finally:
        if address == LOCAL:
            ray.shutdown()
    run = RayRun(address, workers or cluster, len(arguments), round(time.perf_counter() - started, 3))
    return results, run


def _in_worker(function: Callable[..., Any], args: tuple, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in its workers; the run's own count instead
    return function(*args)
