"""Training's explanation overlays: logged per class to the run, within a time budget, never failing training."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.training.explanation_overlays import log_overlays, onnx_predict_fn
from shared.core.contract import CLASS_NAMES, PreprocessingContract
from tests.explanation_models import spot_model_for

spot_model_32 = spot_model_for(32)


@pytest.fixture
def mlflow_run(mlflow_server: Any) -> Any:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("lime-tests")
    try:
        with mlflow.start_run() as run:
            yield run
    finally:
        mlflow.set_tracking_uri(previous)


def _artifacts(run_id: str, tracking_uri: str, folder: str) -> list[str]:
    from mlflow import MlflowClient

    return sorted(Path(f.path).name for f in MlflowClient(tracking_uri).list_artifacts(run_id, folder))


def _download(run_id: str, tracking_uri: str, artifact: str) -> Path:
    from mlflow import MlflowClient

    return Path(MlflowClient(tracking_uri).download_artifacts(run_id, artifact))


def test_training_logs_occlusion_overlays_per_class(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)
    logged = log_overlays(spot_model_32, pixels, labels, "cnn", per_class=2)
    assert logged == 8
    names = _artifacts(mlflow_run.info.run_id, mlflow_server.url, "explanations")
    assert "summary.json" in names
    pngs = [name for name in names if name.endswith(".png")]
    assert len(pngs) == 8
    assert {name.split("_")[0] for name in pngs} == set(CLASS_NAMES)
    summary = json.loads(_download(mlflow_run.info.run_id, mlflow_server.url, "explanations/summary.json").read_text())
    assert (summary["family"], summary["method"], summary["fill"], len(summary["images"])) == (
        "cnn",
        "occlusion",
        "grey",
        8,
    )
    assert "seed" not in summary  # occlusion draws nothing
    for image in summary["images"]:
        assert image["fit_r2"] is None and 1 < image["num_samples"] <= 64 + 81 + 1
        assert 1 <= len(image["regions"]) <= 5 and len(image["opposing_regions"]) <= 5
        assert all(region["weight"] > 0 for region in image["regions"])
        assert all(region["weight"] < 0 for region in image["opposing_regions"])
        # The spot model looks at the middle square only (10/32 .. 18/32): a region has an effect only when a
        # position of the patch (one cell, at most 4 px of the 32) hides it together with part of the square.
        for region in image["regions"] + image["opposing_regions"]:
            x0, y0, x1, y1 = region["bbox"]
            assert x0 < 22 / 32 and x1 > 6 / 32 and y0 < 22 / 32 and y1 > 6 / 32, region


def test_training_can_log_explanation_overlays(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)
    assert log_overlays(spot_model_32, pixels, labels, "snn", per_class=1, method="lime", num_samples=60, seed=4) == 4
    summary = json.loads(_download(mlflow_run.info.run_id, mlflow_server.url, "explanations/summary.json").read_text())
    assert (summary["method"], summary["num_samples"], summary["seed"]) == ("lime", 60, 4)
    assert all(image["fit_r2"] is not None and image["num_samples"] == 60 for image in summary["images"])


def test_overlays_of_the_exported_onnx_model(
    mlflow_run: Any, mlflow_server: Any, sample_arrays: Any, make_onnx: Any
) -> None:
    model_bytes, _ = make_onnx(PreprocessingContract(layout="nhwc", scaling="raw", image_size=24))
    pixels, labels = sample_arrays(24)
    predict = onnx_predict_fn(model_bytes)
    probabilities = predict(pixels[:3])
    assert probabilities.shape == (3, len(CLASS_NAMES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert log_overlays(predict, pixels, labels, "rf", per_class=1) == 4
    run_id = mlflow_run.info.run_id
    png = next(name for name in _artifacts(run_id, mlflow_server.url, "explanations") if name.endswith(".png"))
    overlay = Image.open(_download(run_id, mlflow_server.url, f"explanations/{png}"))
    assert overlay.format == "PNG" and overlay.size == (24, 24)


def test_training_overlays_respect_the_time_budget(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)

    def slow(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return spot_model_32(batch)

    logged = log_overlays(slow, pixels, labels, "rf", per_class=2, time_budget_s=0.1)
    assert logged == 1  # the first image always, then the budget is spent
    from mlflow import MlflowClient

    run = MlflowClient(mlflow_server.url).get_run(mlflow_run.info.run_id)
    assert run.data.tags["explanations_truncated"] == "true"


def test_a_failing_model_does_not_fail_training(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    assert log_overlays(broken, pixels, labels, "snn") == 0
    from mlflow import MlflowClient

    run = MlflowClient(mlflow_server.url).get_run(mlflow_run.info.run_id)
    assert "model exploded" in run.data.tags["explanations_error"]
