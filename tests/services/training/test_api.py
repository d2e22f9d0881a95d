"""The training service over HTTP: start a run, follow it, one at a time, clear 4xx errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.training.config import TrainingSettings
from services.training.main import create_app
from services.training.options import FamilyProgress, TrainingOptions


def authorized(settings: TrainingSettings) -> dict[str, Any]:
    """TestClient options: a Host the service trusts (loopback) and the service's bearer token."""
    assert settings.api_token is not None
    token = settings.api_token.get_secret_value()
    return {"base_url": "http://127.0.0.1", "headers": {"Authorization": f"Bearer {token}"}}


def wait_for_end(client: TestClient, run_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/training-runs/{run_id}").json()
        if body["state"] not in ("queued", "running"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still running after {timeout}s")


def test_run_is_started_and_followed_over_http(training_settings: TrainingSettings) -> None:
    with TestClient(create_app(training_settings), **authorized(training_settings)) as client:
        response = client.post("/v1/training-runs", json={"families": ["rf"], "image_size": 32, "data_dir": None})
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        body = wait_for_end(client, run_id)
        assert body["state"] == "succeeded", body
        rf = body["families"]["rf"]
        assert rf["state"] == "done" and rf["registered_name"] == "brain-tumor-rf"
        assert rf["registered_version"] and rf["mlflow_run_id"] and "test_accuracy" in rf["metrics"]
        assert [run["id"] for run in client.get("/v1/training-runs").json()] == [run_id]


def test_second_run_while_one_is_active_gets_409(training_settings: TrainingSettings) -> None:
    release = threading.Event()

    def slow_run(options: TrainingOptions, settings: TrainingSettings, report) -> list[FamilyProgress]:  # noqa: ANN001
        release.wait(30)
        return []

    with TestClient(create_app(training_settings, run_function=slow_run), **authorized(training_settings)) as client:
        first = client.post("/v1/training-runs", json={"families": ["rf"]})
        assert first.status_code == 202
        second = client.post("/v1/training-runs", json={"families": ["rf"]})
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "TRAINING_BUSY"
        release.set()
        client.app.state.manager.wait(10)
        assert client.post("/v1/training-runs", json={"families": ["rf"]}).status_code == 202
        release.set()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"data_dir": "/definitely/not/here"}, "INVALID_DATA_FOLDER"),
        ({"families": ["rf", "xgboost"]}, "INVALID_REQUEST"),
        ({"search": "exhaustive"}, "INVALID_REQUEST"),
        ({"image_size": 4}, "INVALID_REQUEST"),
        ({"families": ["rf"], "overrides": {"max_feature": 0.2}}, "INVALID_REQUEST"),
        ({"data_dir": "~no-such-user-here/scans"}, "INVALID_DATA_FOLDER"),
        ({"families": []}, "INVALID_REQUEST"),
        ({"families": ["rf", "rf"]}, "INVALID_REQUEST"),
        ({"families": ["rf"], "backend": "dask"}, "INVALID_REQUEST"),
        ({"families": ["rf"], "seed": -1}, "INVALID_REQUEST"),
        ({"families": ["cnn"], "overrides": {"image_size": 1000}}, "INVALID_REQUEST"),
        ({"families": ["cnn"], "overrides": {"epochs": "many"}}, "INVALID_REQUEST"),
        # Text no path or parameter holds: a NUL byte, a control character, an unpaired surrogate.
        ({"data_dir": "/tmp/scans\x00"}, "INVALID_REQUEST"),
        ({"families": ["rf"], "backend": "dask", "scheduler": "tcp://127.0.0.1:8786\x1b[2J"}, "INVALID_REQUEST"),
        ({"families": ["rf"], "overrides": {"criterion": "gini\x00"}}, "INVALID_REQUEST"),
    ],
)
def test_bad_requests_get_422_before_any_work(training_settings: TrainingSettings, payload: dict, code: str) -> None:
    with TestClient(create_app(training_settings), **authorized(training_settings)) as client:
        response = client.post("/v1/training-runs", json=payload)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == code
        assert client.get("/v1/training-runs").json() == []


def test_an_unpaired_surrogate_is_422(training_settings: TrainingSettings) -> None:
    """JSON may escape half a surrogate pair, which no path can hold: 422, not a 500 from the file system."""
    with TestClient(create_app(training_settings), **authorized(training_settings)) as client:
        body = b'{"families": ["rf"], "data_dir": "/tmp/\\ud800scans"}'
        response = client.post("/v1/training-runs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "INVALID_REQUEST"
        assert client.get("/v1/training-runs").json() == []


def test_empty_folder_and_missing_weights_are_422(training_settings: TrainingSettings, tmp_path: Path) -> None:
    (tmp_path / "glioma").mkdir()
    no_weights = training_settings.model_copy(update={"mobilenetv2_weights": tmp_path / "none.h5"})
    with TestClient(create_app(no_weights), **authorized(no_weights)) as client:
        empty = client.post("/v1/training-runs", json={"data_dir": str(tmp_path)})
        assert empty.status_code == 422 and "no class folders" in empty.json()["error"]["message"]
        weights = client.post("/v1/training-runs", json={"families": ["mobilenetv2"]})
        assert weights.status_code == 422 and weights.json()["error"]["code"] == "WEIGHTS_NOT_FOUND"


def test_unknown_run_is_404(training_settings: TrainingSettings) -> None:
    with TestClient(create_app(training_settings), **authorized(training_settings)) as client:
        response = client.get("/v1/training-runs/nope")
        assert response.status_code == 404 and response.json()["error"]["code"] == "RUN_NOT_FOUND"
