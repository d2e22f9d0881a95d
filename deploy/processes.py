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

from deploy.credentials import MlflowCredentials, read_or_create_secret

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


def start_mlflow(
    data_dir: Path,
    port: int,
    log_path: Path,
    # Generous: with basic-auth MLflow also migrates its user store and hashes the admin's password at start,
    # and on a machine shared by several test runs that took over 90 s.
    timeout: float = 180.0,
    *,
    credentials: MlflowCredentials | None = None,
    backend_uri: str | None = None,
    artifacts_destination: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> ManagedProcess:
    """A real MLflow tracking server: SQLite backend, artifacts served from a local folder, and authentication
    (``--app-name basic-auth``): every REST call needs a user; anonymous ones get 401.

    ``backend_uri`` (e.g. ``postgresql://...``) and ``artifacts_destination`` (e.g. ``s3://bucket/mlflow``)
    replace the SQLite file and the local folder; ``extra_env`` goes to the server only (the S3 endpoint and keys).

    ``credentials`` are the admin's; without them, MLflow's standard ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` are used, and when those are unset too, new ones are generated and exported to
    this process's environment, so that its MLflow clients and the processes it starts authenticate.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials = credentials or MlflowCredentials.from_env() or _export(MlflowCredentials.generate())
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        backend_uri or f"sqlite:///{(data_dir / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        artifacts_destination or str((data_dir / "artifacts").resolve()),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {
        # The job-execution feature forks a pool of queue workers we never use; without it start-up is twice as fast.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(write_mlflow_auth_config(data_dir)),
        # Signs the UI's sessions and CSRF tokens: kept with the server's data, so a restart keeps them valid.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": read_or_create_secret(data_dir / "server-secret-key")[0],
        **credentials.server_env(),
        # e.g. MLFLOW_S3_ENDPOINT_URL and the store's keys: the server writes artifacts, clients go through it.
        **(extra_env or {}),
    }
    server = start_process("mlflow", command, env, log_path, loopback_url(port), "/health", timeout)
    try:
        _check_mlflow_credentials(server, credentials)
    except BaseException:
        server.stop()
        raise
    return server


# Who may do what in MLflow. READ: a user the admin creates later may browse every experiment and model but
# change nothing until granted; the admin (the stack, training, the tests) may do everything. Anonymous: nothing.
MLFLOW_DEFAULT_PERMISSION = "READ"
# Seconds a checked password is remembered: the check (PBKDF2) costs a few milliseconds on every request, and
# one worker has no other copy of the cache to go stale.
MLFLOW_AUTH_CACHE_TTL_S = 60


def write_mlflow_auth_config(data_dir: Path) -> Path:
    """MLflow's basic-auth configuration (``MLFLOW_AUTH_CONFIG_PATH``): its user store beside the tracking data.
    No password in it: the admin's comes from the environment."""
    path = data_dir / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        f"default_permission = {MLFLOW_DEFAULT_PERMISSION}\n"
        f"database_uri = sqlite:///{(data_dir / 'basic_auth.db').resolve()}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_TTL_S}\n"
    )
    return path


def _export(credentials: MlflowCredentials) -> MlflowCredentials:
    os.environ.update(credentials.client_env())
    return credentials


def _check_mlflow_credentials(server: ManagedProcess, credentials: MlflowCredentials) -> None:
    """Fail now, with the reason, when the server's user store already holds another admin password."""
    response = httpx.get(
        f"{server.url}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=credentials.httpx_auth(),
        timeout=10.0,
        trust_env=False,
    )
    if response.status_code in (401, 403):
        raise RuntimeError(
            f"MLflow refuses the credentials of user {credentials.username!r}: its user store "
            f"({server.name} data folder, basic_auth.db) was created with another password. Use that password "
            "(MLFLOW_TRACKING_PASSWORD) or change it with MLflow's update-password API."
        )


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
