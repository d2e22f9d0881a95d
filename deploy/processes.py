"""Starting and stopping the stack's processes on loopback; used by the stack command and the tests."""

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
            return ""


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
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _spawn(name: str, command: list[str], env: dict[str, str], log_path: Path, url: str) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
    )
    return ManagedProcess(name, process, url, log_path)


def wait_until_healthy(managed: ManagedProcess, path: str, timeout: float) -> None:
    """Poll url+path until it answers 200; fail early with the log when the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed.process.poll() is not None:
            raise RuntimeError(f"{managed.name} exited with {managed.process.returncode}:\n{managed.log_tail()}")
        try:
            if httpx.get(f"{managed.url}{path}", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{managed.name} did not answer {path} within {timeout:.0f}s:\n{managed.log_tail()}")


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
    managed = _spawn("mlflow", command, env, log_path, f"http://{LOOPBACK}:{port}")
    wait_until_healthy(managed, "/health", timeout)
    return managed


def start_service(
    name: str, port: int, env: dict[str, str], log_path: Path, timeout: float = 60.0, health_path: str = "/healthz"
) -> ManagedProcess:
    """One of our FastAPI services under uvicorn, as a separate process."""
    command = [sys.executable, "-m", "uvicorn", "--factory", SERVICE_APPS[name]]
    command += ["--host", LOOPBACK, "--port", str(port)]
    managed = _spawn(name, command, {**os.environ, **env}, log_path, f"http://{LOOPBACK}:{port}")
    wait_until_healthy(managed, health_path, timeout)
    return managed
