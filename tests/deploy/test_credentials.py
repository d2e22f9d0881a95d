"""The stack's secrets (deploy/credentials.py): generated once, kept readable by their owner only, read back."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deploy.credentials import (
    API_TOKEN_FILE,
    MLFLOW_PASSWORD_FILE,
    MlflowCredentials,
    read_or_create_secret,
    stack_secrets,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' session sets MLflow's variables (tests/conftest.py); the stack would take them."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "BT_TRAINING_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_first_start_generates_the_secrets_owner_only_and_later_starts_read_them(
    tmp_path: Path, no_secrets_in_env: None
) -> None:
    first = stack_secrets(tmp_path)
    folder = tmp_path / "secrets"
    assert first.created == (API_TOKEN_FILE, MLFLOW_PASSWORD_FILE)
    assert first.kept == {name: str(folder / name) for name in first.created}
    assert mode(folder) == 0o700
    for name in first.created:
        assert mode(folder / name) == 0o600
    assert len(first.api_token) >= 40 and len(first.mlflow.password) >= 40
    assert first.api_token != first.mlflow.password

    again = stack_secrets(tmp_path)
    assert again.created == ()
    assert (again.api_token, again.mlflow) == (first.api_token, first.mlflow)
    env = again.service_env()
    assert env == {
        "BT_TRAINING_API_TOKEN": first.api_token,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": first.mlflow.password,
    }


def test_a_secret_the_operator_wrote_is_kept(tmp_path: Path, no_secrets_in_env: None) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / API_TOKEN_FILE).write_text("chosen-by-the-operator\n")
    assert stack_secrets(tmp_path).api_token == "chosen-by-the-operator"
    assert read_or_create_secret(tmp_path / "secrets" / API_TOKEN_FILE) == ("chosen-by-the-operator", False)


def test_secrets_set_in_the_environment_win_and_no_file_is_made(
    tmp_path: Path, no_secrets_in_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BT_TRAINING_API_TOKEN", "token-from-env")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ops")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-from-env")
    secrets = stack_secrets(tmp_path)
    assert (secrets.api_token, secrets.mlflow) == ("token-from-env", MlflowCredentials("ops", "pw-from-env"))
    assert secrets.created == () and not (tmp_path / "secrets" / API_TOKEN_FILE).exists()
    assert all(where.startswith("environment") for where in secrets.kept.values())


def test_no_password_in_reprs(tmp_path: Path, no_secrets_in_env: None) -> None:
    secrets = stack_secrets(tmp_path)
    for shown in (repr(secrets), repr(secrets.mlflow), str(secrets.mlflow)):
        assert secrets.mlflow.password not in shown and secrets.api_token not in shown


def test_credentials_from_mlflows_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert MlflowCredentials.from_env() == MlflowCredentials("someone", "pw")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert MlflowCredentials.from_env() is None
