"""A PostgreSQL cluster of our own in a folder, on a free loopback port: MLflow's backend store for the tests
and, when asked, for the launcher.

Debian's server binaries (``initdb``, ``postgres``) are used as they are; nothing is installed, configured
or started system-wide. PostgreSQL refuses to run as root, so when we are root the cluster runs as the
``postgres`` user (Debian's package creates it; ``nobody`` otherwise) and its folder belongs to that user,
which must be able to reach it (e.g. a folder under /tmp, not under root's 0700 pytest folder).
Clients log in with a generated password (scram-sha-256), on TCP only, from 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from deploy.processes import LOOPBACK, ManagedProcess, stop_process_group

# The role and database MLflow uses; the role owns the cluster, so it may create the database.
ROLE = "mlflow"
DATABASE = "mlflow"
# The audit trail's database (shared/kit/audit), in the same cluster when the stack runs on PostgreSQL.
AUDIT_DATABASE = "audit"
# SQLAlchemy 2.1 reads a bare "postgresql://" as psycopg 3; the driver installed with the project is psycopg2.
DRIVER_SCHEME = "postgresql+psycopg2"


def with_driver(uri: str) -> str:
    """``uri`` with psycopg2 named as its driver when it names none (``postgresql://`` or ``postgres://``)."""
    for bare in ("postgresql://", "postgres://"):
        if uri.startswith(bare):
            return f"{DRIVER_SCHEME}://{uri.removeprefix(bare)}"
    return uri


# The launcher's own cluster (``deploy.stack up --postgres``): one above PostgreSQL's 5432, which a system cluster
# may hold.
DEFAULT_STACK_PORT = 5433


def stack_port() -> int:
    """The port of the launcher's cluster: ``BT_POSTGRES_PORT``, else 5433."""
    return int(os.environ.get("BT_POSTGRES_PORT", DEFAULT_STACK_PORT))


def bin_dir() -> Path:
    """Where initdb and postgres live: ``BT_POSTGRES_BIN``, else Debian's newest /usr/lib/postgresql/<n>/bin,
    else the folder of an ``initdb`` on PATH."""
    if configured := os.environ.get("BT_POSTGRES_BIN"):
        return Path(configured)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if debian:
        return debian[-1].parent
    if found := shutil.which("initdb"):
        return Path(found).parent
    raise RuntimeError("PostgreSQL's server is not installed (no initdb): apt-get install postgresql")


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user the cluster runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresCluster:
    """A running cluster: its process (the ``postgres`` server), where it keeps its data, how to reach it."""

    process: ManagedProcess
    folder: Path
    port: int
    password: str

    @property
    def dsn(self) -> str:
        """libpq's URI of MLflow's database (psycopg2.connect, psql)."""
        return self.dsn_of(DATABASE)

    def dsn_of(self, database: str) -> str:
        """libpq's URI of one of the cluster's databases (``AUDIT_DATABASE``: the audit trail's)."""
        return f"postgresql://{ROLE}:{quote(self.password, safe='')}@{LOOPBACK}:{self.port}/{database}"

    @property
    def uri(self) -> str:
        """SQLAlchemy's URI of MLflow's database (MLflow's ``--backend-store-uri``)."""
        return with_driver(self.dsn)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, nothing is lost), then the process group if needed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.process.wait(timeout)
        stop_process_group(self.process.process.pid)


def _init_cluster(folder: Path, user: pwd.struct_passwd | None, durable: bool) -> str:
    """initdb into ``folder/data`` with a generated password for the ``mlflow`` role; returns the password."""
    password = secrets.token_urlsafe(24)
    password_file = folder / "password"
    password_file.write_text(password)
    password_file.chmod(0o600)
    if user is not None:
        os.chown(password_file, user.pw_uid, user.pw_gid)
    command = [
        str(bin_dir() / "initdb"),
        "--pgdata",
        str(folder / "data"),
        "--username",
        ROLE,
        "--pwfile",
        str(password_file),
        "--auth",
        "scram-sha-256",
        "--encoding",
        "UTF8",
        "--locale",
        "C",
    ]
    if not durable:
        command.append("--no-sync")
    result = subprocess.run(command, capture_output=True, text=True, check=False, **_as_user(user))
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed in {folder}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return password


def _as_user(user: pwd.struct_passwd | None) -> dict[str, object]:
    # subprocess drops to the user itself (setgid, setgroups, setuid): no su or runuser in between.
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": {**os.environ, "HOME": user.pw_dir}}


def _prepare(folder: Path, user: pwd.struct_passwd | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "socket").mkdir(exist_ok=True)
    if user is None:
        return
    for path in (folder, folder / "socket"):
        os.chown(path, user.pw_uid, user.pw_gid)
    for parent in folder.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise RuntimeError(
                f"{parent} is closed to other users, so PostgreSQL (running as {user.pw_name}) cannot reach "
                f"{folder}: choose a folder under one that is open, e.g. /tmp"
            )


def start_postgres(
    folder: Path, port: int, log_path: Path, *, durable: bool = True, timeout: float = 60.0
) -> PostgresCluster:
    """Start the cluster kept in ``folder`` (created with initdb on first use) on 127.0.0.1:``port``, with
    the ``mlflow`` database. ``durable=False`` turns off fsync: for throw-away clusters in tests."""
    user = _run_as()
    _prepare(folder, user)
    password_file = folder / "password"
    password = password_file.read_text() if (folder / "data").exists() else _init_cluster(folder, user, durable)
    command = [str(bin_dir() / "postgres"), "-D", str(folder / "data"), "-p", str(port), "-h", LOOPBACK]
    command += ["-k", str(folder / "socket")]
    if not durable:
        command += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_user(user),  # type: ignore[arg-type]
        )
    cluster = PostgresCluster(
        ManagedProcess("postgres", popen, f"postgresql://{LOOPBACK}:{port}", log_path), folder, port, password
    )
    try:
        _wait_and_create_database(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_and_create_database(cluster: PostgresCluster, timeout: float) -> None:
    """Poll until the server takes a login, then create MLflow's and the audit trail's databases if missing."""
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        if cluster.process.process.poll() is not None:
            raise RuntimeError(
                f"postgres exited with {cluster.process.process.returncode}:\n{cluster.process.log_tail()}"
            )
        try:
            connection = psycopg2.connect(
                host=LOOPBACK,
                port=cluster.port,
                user=ROLE,
                password=cluster.password,
                dbname="postgres",
                connect_timeout=2,
            )
            break
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postgres did not accept a login within {timeout:.0f}s:\n{cluster.process.log_tail()}"
                ) from exc
            time.sleep(0.2)
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            for database in (DATABASE, AUDIT_DATABASE):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {database}")
    finally:
        connection.close()
