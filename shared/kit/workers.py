"""Worker processes for the services that classify (inference, gateway): one uvicorn worker per usable core.

One Python process has one GIL: decoding, the framework and the event loop would share one core however many
onnxruntime runs go on beside them. Each worker is a whole copy of the app (its own models, its own connections);
uvicorn's supervisor spreads connections over them.

Prometheus: with several workers each process writes its series to files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
folder the supervisor makes and removes), and ``/metrics`` of any worker sums them (prometheus-client's
multiprocess mode, ``shared.kit.metrics``).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask where the OS has one, and at most its cgroup's CPU quota
    (a container limited to 2 CPUs on a 32-core node sees 32 in its mask)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(CGROUP_CPU_MAX)
    return max(1, min(cpus, quota)) if quota else cpus


def cgroup_cpu_quota(cpu_max: Path) -> int | None:
    """The CPUs a cgroup v2 ``cpu.max`` allows (``"200000 100000"`` -> 2, rounded up), None when unlimited or
    unreadable."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return math.ceil(int(quota) / int(period)) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


class WorkerSettings(BaseSettings):
    """The ``workers`` setting of a service that may run several worker processes."""

    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Worker processes of `python -m services.<name>` (and the stack); 0: one per usable CPU. "
        "`uvicorn --factory ...` runs one (with its own --workers, the copies neither share metrics nor size their "
        "threads to each other).",
    )

    def process_count(self) -> int:
        return self.workers or usable_cpus()


def share_metrics_between_workers(service: str) -> None:
    """Give the workers about to start one fresh folder for their Prometheus series (removed at exit), unless the
    operator named one."""
    if os.environ.get(MULTIPROC_ENV):
        return
    folder = tempfile.mkdtemp(prefix=f"bt-{service}-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    atexit.register(shutil.rmtree, folder, True)


def forget_this_worker() -> None:
    """At a worker's shutdown: drop its live gauges from the shared series (a gauge's ``liveall`` series would
    otherwise outlive the worker)."""
    if metrics_shared_between_workers():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def metrics_shared_between_workers() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))
