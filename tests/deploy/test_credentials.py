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


def test_first_start_generates_the_secrets_owner_only_and_later_starts_read_them(tmp_path: Path) -> None:
    first = stack_secrets(tmp_path)
    assert first.created == (API_TOKEN_FILE, MLFLOW_PASSWORD_FILE)
    assert first.folder == tmp_path / "secrets" and mode(first.folder) == 0o700
    for name in first.created:
        assert mode(first.folder / name) == 0o600
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


def test_a_secret_the_operator_wrote_is_kept(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / API_TOKEN_FILE).write_text("chosen-by-the-operator\n")
    assert stack_secrets(tmp_path).api_token == "chosen-by-the-operator"
    assert read_or_create_secret(tmp_path / "secrets" / API_TOKEN_FILE) == ("chosen-by-the-operator", False)


def test_no_password_in_reprs(tmp_path: Path) -> None:
    secrets = stack_secrets(tmp_path)
    for shown in (repr(secrets), repr(secrets.mlflow), str(secrets.mlflow)):
        assert secrets.mlflow.password not in shown and secrets.api_token not in shown


def test_credentials_from_mlflows_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert MlflowCredentials.from_env() == MlflowCredentials("someone", "pw")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert MlflowCredentials.from_env() is None
