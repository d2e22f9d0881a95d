"""What basic-auth costs MLflow's start: `python -m benchmarks.mlflow_auth_start [--repeats N]`.

Starts `mlflow server` on 127.0.0.1 alternately as `deploy.processes.start_mlflow` starts it (`--app-name
basic-auth`, its first start on an empty folder: user store created, admin's password hashed, credentials
checked once) and with the same command without authentication, each on a fresh folder, and prints, per start,
the CPU seconds the server's processes used until `/health` answered (less sensitive than wall time to other
work on the machine) and the wall seconds. Everything it starts is stopped. Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from deploy.credentials import MlflowCredentials
from deploy.processes import LOOPBACK, ManagedProcess, free_port, loopback_url, start_mlflow, start_process


def start_without_auth(data_dir: Path, port: int) -> ManagedProcess:
    """The server as it was started before authentication: same stores, same options, no ``--app-name``."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{(data_dir / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        str((data_dir / "artifacts").resolve()),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    return start_process("mlflow", command, env, data_dir / "mlflow.log", loopback_url(port), "/health", 300.0)


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its children so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def measure(with_auth: bool, credentials: MlflowCredentials) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one start on a fresh folder."""
    with tempfile.TemporaryDirectory() as folder:
        data_dir, port = Path(folder), free_port()
        started = time.monotonic()
        if with_auth:
            server = start_mlflow(data_dir, port, data_dir / "mlflow.log", 300.0, credentials=credentials)
        else:
            server = start_without_auth(data_dir, port)
        wall = time.monotonic() - started
        try:
            return cpu_seconds(server.process.pid), wall
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mlflow_auth_start", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="starts of each kind, alternated")
    args = parser.parse_args(argv)
    credentials = MlflowCredentials.generate()
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "basic-auth": []}
    for _ in range(args.repeats):
        for kind in results:
            results[kind].append(measure(kind == "basic-auth", credentials))
    for kind, starts in results.items():
        cpu = statistics.median(c for c, _ in starts)
        wall = statistics.median(w for _, w in starts)
        shown = ", ".join(f"{c:.1f}/{w:.1f}" for c, w in starts)
        print(f"{kind:<10} CPU/wall s per start: {shown}; median CPU {cpu:.1f} s, wall {wall:.1f} s")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
