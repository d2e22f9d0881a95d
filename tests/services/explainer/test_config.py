"""The explainer's settings: environment variables, defaults and the values refused at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.explainer.config import Settings
from shared.core.explanation.occlusion import DEFAULT_SHIFTS
from shared.core.explanation.regions import DEFAULT_CELLS

ROOT = Path(__file__).resolve().parents[3]


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8003)
    assert settings.inference_url == "http://127.0.0.1:8001"
    assert (settings.min_num_samples, settings.default_num_samples, settings.max_num_samples) == (50, 500, 3000)
    assert settings.num_segments == 48
    assert (settings.default_method, settings.default_fill) == ("occlusion", "grey")
    assert (settings.occlusion_cells, settings.occlusion_shifts) == (8, 2)
    # The settings keep their own copy (reading them imports no scikit-image); it is the library's default.
    assert (settings.occlusion_cells, settings.occlusion_shifts) == (DEFAULT_CELLS, DEFAULT_SHIFTS)
    assert settings.max_copies_per_request == 4096


def test_reading_the_settings_imports_no_lime() -> None:
    # The LIME defaults are the settings' own, so the settings never pull in lime and scikit-learn.
    probe = (
        "import sys, services.explainer.config; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lime', 'sklearn', 'skimage'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert loaded.strip() == "[]"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_EXPLAINER_PORT", "9103")
    monkeypatch.setenv("BT_EXPLAINER_INFERENCE_URL", " http://10.0.0.5:8001/ ")
    monkeypatch.setenv("BT_EXPLAINER_DEFAULT_NUM_SAMPLES", "300")
    monkeypatch.setenv("BT_EXPLAINER_DEFAULT_METHOD", "lime")
    settings = Settings()
    assert settings.default_method == "lime"
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
        {"default_method": "gradcam"},
        {"default_fill": "white"},
        {"occlusion_cells": 1},
        {"occlusion_shifts": 0},
        {"occlusion_cells": 32, "occlusion_shifts": 2},  # 64 x 64 tiles: more regions than a label map holds
        {"max_copies_per_request": 0},
    ],
)
def test_bad_values_are_refused(values: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)
