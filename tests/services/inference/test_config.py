"""Inference settings: env prefix, the MLflow variable, refusal of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.inference.config import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8001)
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.debug_endpoints is False


def test_environment_with_prefix_and_mlflow_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000/")
    monkeypatch.setenv("BT_INFERENCE_PORT", "9100")
    monkeypatch.setenv("BT_INFERENCE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BT_INFERENCE_INTRA_OP_THREADS", "2")
    monkeypatch.setenv("BT_INFERENCE_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    assert settings.tracking_uri == "http://mlflow.internal:5000"
    assert settings.port == 9100
    assert settings.cache_dir == tmp_path
    assert settings.intra_op_threads == 2
    assert settings.max_upload_bytes == 1000


def test_service_specific_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://generic:5000")
    monkeypatch.setenv("BT_INFERENCE_TRACKING_URI", "http://specific:5000")
    assert Settings().tracking_uri == "http://specific:5000"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BT_INFERENCE_PORT", "0"),
        ("BT_INFERENCE_MAX_UPLOAD_BYTES", "-1"),
        ("BT_INFERENCE_INTRA_OP_THREADS", "many"),
        ("BT_INFERENCE_TRACKING_URI", "   "),
        ("BT_INFERENCE_REGISTRY_RETRY_S", "0"),
    ],
)
def test_bad_values_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()
