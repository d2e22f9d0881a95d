"""Gateway settings: env prefix and refusal of bad values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.config import Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.inference_url == "http://127.0.0.1:8001"
    assert settings.max_upload_bytes == 10 * 1024 * 1024


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_GATEWAY_INFERENCE_URL", "http://inference:8001/")
    monkeypatch.setenv("BT_GATEWAY_MLFLOW_UI_URL", "http://mlflow:5000")
    monkeypatch.setenv("BT_GATEWAY_EXPLAINER_URL", "http://explainer:8003/")
    monkeypatch.setenv("BT_GATEWAY_REQUEST_TIMEOUT_S", "2.5")
    settings = Settings()
    assert settings.explainer_url == "http://explainer:8003"
    assert settings.inference_url == "http://inference:8001"
    assert settings.mlflow_ui_url == "http://mlflow:5000"
    assert settings.request_timeout_s == 2.5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BT_GATEWAY_INFERENCE_URL", "inference:8001"),
        ("BT_GATEWAY_EXPLAINER_URL", "explainer:8003"),
        ("BT_GATEWAY_EXPLAIN_TIMEOUT_S", "0"),
        ("BT_GATEWAY_PORT", "70000"),
        ("BT_GATEWAY_MAX_UPLOAD_BYTES", "0"),
        ("BT_GATEWAY_REQUEST_TIMEOUT_S", "-1"),
        ("BT_GATEWAY_REQUEST_TIMEOUT_S", "0"),
    ],
)
def test_bad_values_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


def test_one_inference_url_is_one_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_GATEWAY_INFERENCE_URL", "http://inference:8001/")
    assert Settings().inference_urls == ["http://inference:8001"]


def test_inference_urls_are_comma_separated_and_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_GATEWAY_INFERENCE_URL", "http://ignored:8001")
    monkeypatch.setenv("BT_GATEWAY_INFERENCE_URLS", " http://a:8001/, http://b:8011 ,")
    assert Settings().inference_urls == ["http://a:8001", "http://b:8011"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BT_GATEWAY_INFERENCE_URLS", "http://a:8001,b:8011"),
        ("BT_GATEWAY_INFERENCE_URLS", "http://a:8001,http://a:8001/"),
        ("BT_GATEWAY_PREDICT_TIMEOUT_S", "0"),
        ("BT_GATEWAY_HEALTH_CHECK_INTERVAL_S", "0"),
    ],
)
def test_bad_replica_settings_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()
