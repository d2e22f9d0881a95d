"""The secrets of a stack: the API token of the routes that change what is served, and MLflow's admin credentials.

Generated on first start (``secrets.token_urlsafe``) and kept under the state folder, ``<state>/secrets/``, one
file each, mode 0600 in a 0700 folder; later starts read them back. Processes get them through the environment
only: ``BT_TRAINING_API_TOKEN`` for the training service, MLflow's standard ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` for every MLflow client (the services, training, the launcher), and
``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD`` for the MLflow server, which creates its admin
user from them the first time it starts on an empty user store.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx

SECRETS_DIR = "secrets"
API_TOKEN_FILE = "api-token"
MLFLOW_PASSWORD_FILE = "mlflow-admin-password"
MLFLOW_ADMIN_USERNAME = "admin"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
API_TOKEN_ENV = "BT_TRAINING_API_TOKEN"


@dataclass(frozen=True)
class MlflowCredentials:
    """One MLflow user's name and password (the admin's, for the stack and the tests)."""

    username: str
    password: str

    @classmethod
    def from_env(cls) -> MlflowCredentials | None:
        """The credentials MLflow's own client would send, from ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``."""
        username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        return cls(username, password) if username and password else None

    @classmethod
    def generate(cls, username: str = MLFLOW_ADMIN_USERNAME) -> MlflowCredentials:
        return cls(username, secrets.token_urlsafe(24))

    def client_env(self) -> dict[str, str]:
        """The environment with which MLflow clients (MlflowClient, mlflow.*) authenticate as this user."""
        return {USERNAME_ENV: self.username, PASSWORD_ENV: self.password}

    def server_env(self) -> dict[str, str]:
        """The environment from which an MLflow server with basic-auth creates this user as its admin."""
        return {"MLFLOW_AUTH_ADMIN_USERNAME": self.username, "MLFLOW_AUTH_ADMIN_PASSWORD": self.password}

    def httpx_auth(self) -> httpx.BasicAuth:
        """For calls to MLflow's REST API made with httpx."""
        return httpx.BasicAuth(self.username, self.password)

    def __repr__(self) -> str:  # never the password, in a log or a test failure
        return f"MlflowCredentials(username={self.username!r}, password=***)"


def mlflow_auth_from_env() -> httpx.BasicAuth | None:
    """httpx auth for MLflow's REST API from MLflow's standard variables; None when they are not set."""
    credentials = MlflowCredentials.from_env()
    return credentials.httpx_auth() if credentials else None


def read_or_create_secret(path: Path) -> tuple[str, bool]:
    """The secret kept in ``path``, created (random, mode 0600) when the file is missing; and whether it was."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32)
    # O_EXCL: two launchers starting at once cannot both write; the mode is set at creation, never world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


@dataclass(frozen=True)
class StackSecrets:
    """What ``python -m deploy.stack up`` passes to its processes, and where each secret is kept."""

    api_token: str
    mlflow: MlflowCredentials
    kept: dict[str, str]  # secret -> its file, or the environment variable it came from
    created: tuple[str, ...]  # the files made on this start

    def service_env(self) -> dict[str, str]:
        """The environment of the services and of training: the API token and the MLflow credentials."""
        return {API_TOKEN_ENV: self.api_token, **self.mlflow.client_env()}

    def __repr__(self) -> str:
        return f"StackSecrets(kept={self.kept!r}, created={self.created!r})"


def stack_secrets(state_dir: Path) -> StackSecrets:
    """The stack's secrets: from the environment when set there (``BT_TRAINING_API_TOKEN``, MLflow's
    ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``), else from ``<state_dir>/secrets/``, generated when missing."""
    folder = state_dir / SECRETS_DIR
    kept: dict[str, str] = {}
    created: list[str] = []

    def from_file(name: str) -> str:
        value, made = read_or_create_secret(folder / name)
        kept[name] = str(folder / name)
        created.extend([name] if made else [])
        return value

    api_token = os.environ.get(API_TOKEN_ENV) or from_file(API_TOKEN_FILE)
    if API_TOKEN_FILE not in kept:
        kept[API_TOKEN_FILE] = f"environment ({API_TOKEN_ENV})"
    mlflow = MlflowCredentials.from_env()
    if mlflow is None:
        mlflow = MlflowCredentials(MLFLOW_ADMIN_USERNAME, from_file(MLFLOW_PASSWORD_FILE))
    else:
        kept[MLFLOW_PASSWORD_FILE] = f"environment ({USERNAME_ENV}, {PASSWORD_ENV})"
    return StackSecrets(api_token, mlflow, kept, tuple(created))
