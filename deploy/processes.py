"""Starting and stopping the stack's processes on loopback; used by the stack command, the benchmarks and the tests.

Every process runs in its own process group (MLflow forks workers) from the project folder, logs to a
file, and counts as started only once its health path answers 200; one that dies or stays silent is
stopped and reported with the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

SERVICE_APPS = {
    "gateway": "services.gateway.main:create_app",
    "inference": "services.inference.main:create_app",
    "training": "services.training.main:create_app",
    "explainer": "services.explainer.main:create_app",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


def loopback_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.process.pid, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group (MLflow runs worker children), then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        # A leader that is our child stays a zombie (and its group alive) until it is reaped.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def spawn(name: str, command: list[str], env: dict[str, str], log_path: Path, url: str) -> ManagedProcess:
    """Start ``command`` in the project folder in a new process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name, process, url, log_path)


def wait_until_healthy(managed: ManagedProcess, path: str, timeout: float) -> None:
    """Poll url+path until it answers 200; fail early with the log when the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed.process.poll() is not None:
            raise RuntimeError(f"{managed.name} exited with {managed.process.returncode}:\n{managed.log_tail()}")
        try:
            # Loopback only: a proxy from the environment must not answer for our process.
            if httpx.get(f"{managed.url}{path}", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{managed.name} did not answer {path} within {timeout:.0f}s:\n{managed.log_tail()}")


def start_process(
    name: str, command: list[str], env: dict[str, str], log_path: Path, url: str, health_path: str, timeout: float
) -> ManagedProcess:
    """``spawn`` and ``wait_until_healthy``; a process that does not come up is stopped before the error."""
    managed = spawn(name, command, env, log_path, url)
    try:
        wait_until_healthy(managed, health_path, timeout)
    except BaseException:
        managed.stop()
        raise
    return managed


def start_mlflow(data_dir: Path, port: int, log_path: Path, timeout: float = 90.0) -> ManagedProcess:
    """A real MLflow tracking server: SQLite backend, artifacts served from a local folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
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
    # The job-execution feature forks a pool of queue workers we never use; without it start-up is twice as fast.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    return start_process("mlflow", command, env, log_path, loopback_url(port), "/health", timeout)


def service_command(name: str, port: int, *, as_module: bool = False) -> tuple[list[str], dict[str, str]]:
    """The command that starts service ``name`` on loopback ``port``, and the environment it needs for that.

    By default uvicorn's own ``--factory`` (as the stack starts it); with ``as_module``, the service's
    ``python -m services.<name>``, which takes its host and port from its settings.
    """
    if as_module:
        prefix = f"BT_{name.upper()}_"
        return [sys.executable, "-m", f"services.{name}"], {f"{prefix}HOST": LOOPBACK, f"{prefix}PORT": str(port)}
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", SERVICE_APPS[name]]
    return [*uvicorn, "--host", LOOPBACK, "--port", str(port)], {}


def start_service(
    name: str,
    port: int,
    env: dict[str, str],
    log_path: Path,
    timeout: float = 60.0,
    health_path: str = "/healthz",
    *,
    as_module: bool = False,
) -> ManagedProcess:
    """One of our FastAPI services as a separate process, with ``env`` over the current environment."""
    command, placement = service_command(name, port, as_module=as_module)
    full_env = {**os.environ, **env, **placement}
    return start_process(name, command, full_env, log_path, loopback_url(port), health_path, timeout)
