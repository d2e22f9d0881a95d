"""The explainer's settings: environment variables, defaults and the values refused at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.explainer.config import Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8003)
    assert settings.inference_url == "http://127.0.0.1:8001"
    assert (settings.min_num_samples, settings.default_num_samples, settings.max_num_samples) == (50, 500, 3000)


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_EXPLAINER_PORT", "9103")
    monkeypatch.setenv("BT_EXPLAINER_INFERENCE_URL", " http://10.0.0.5:8001/ ")
    monkeypatch.setenv("BT_EXPLAINER_DEFAULT_NUM_SAMPLES", "300")
    settings = Settings()
    assert settings.port == 9103
    assert settings.inference_url == "http://10.0.0.5:8001"
    assert settings.default_num_samples == 300


@pytest.mark.parametrize(
    "values",
    [
        {"inference_url": "ftp://example"},
        {"port": 0},
        {"default_num_samples": 10},  # below the minimum
        {"default_num_samples": 4000},  # above the maximum
        {"min_num_samples": 1},
        {"num_segments": 2},
        {"max_concurrent": 0},
    ],
)
def test_bad_values_are_refused(values: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)
