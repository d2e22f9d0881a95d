"""The LIME core: segmentation, explanations of a model whose answer we know, overlays, training artifacts."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.contract import CLASS_NAMES, PreprocessingContract
from shared.lime_explanation import (
    explain,
    log_lime_overlays,
    onnx_predict_fn,
    render_overlay,
    segment,
    top_overlap,
)
from shared.onnx_classifier import OnnxClassifier

GLIOMA = CLASS_NAMES.index("glioma")
# The square the fake model looks at: rows/columns 40..72 of a 128 px slice.
SPOT = (slice(40, 72), slice(40, 72))


def _slice(sample_arrays: Any, index: int = 0, size: int = 128) -> np.ndarray:
    pixels, _ = sample_arrays(size)
    return pixels[index]


def spot_model_for(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A fake model that says "glioma" as strongly as a central square is bright, ignoring the rest."""
    low, high = size * 5 // 16, size * 9 // 16

    def model(batch: np.ndarray) -> np.ndarray:
        brightness = batch[:, low:high, low:high].reshape(len(batch), -1).mean(axis=1) / 255.0
        glioma = 0.4 + 0.5 * brightness  # always the top class
        out = np.repeat(((1.0 - glioma) / 3.0)[:, None], len(CLASS_NAMES), axis=1)
        out[:, GLIOMA] = glioma
        return out

    return model


spot_model = spot_model_for(128)
spot_model_32 = spot_model_for(32)


def test_segments_are_dense_deterministic_and_follow_the_tissue(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    labels = segment(image)
    assert labels.shape == image.shape and labels.dtype == np.int32
    assert set(np.unique(labels)) == set(range(labels.max() + 1))  # 0..K-1 without gaps, as lime assumes
    assert 20 <= labels.max() + 1 <= 80
    np.testing.assert_array_equal(segment(image), labels)
    # The dark surroundings form one region of their own.
    corners = {labels[0, 0], labels[0, -1], labels[-1, 0], labels[-1, -1]}
    assert len(corners) == 1
    assert image[labels == corners.pop()].mean() < 20


def test_segmentation_of_a_flat_image_still_works() -> None:
    labels = segment(np.full((32, 32), 120, dtype=np.uint8), num_segments=8)
    assert labels.shape == (32, 32) and labels.min() == 0


def test_the_region_the_model_looks_at_comes_first(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = explain(image, spot_model, CLASS_NAMES, num_samples=300, seed=0)
    assert result.label == "glioma" == result.predicted_label
    np.testing.assert_allclose(result.probabilities, spot_model(image[None])[0])
    in_spot = np.zeros(image.shape, dtype=bool)
    in_spot[SPOT] = True
    top = result.top_regions(3)
    for region in top:
        assert region.weight > 0
        assert in_spot[result.segments == region.segment].mean() > 0.5, region
    outside = [s for s in result.weights if in_spot[result.segments == s].mean() == 0]
    assert max(abs(result.weights[s]) for s in outside) < 0.2 * top[0].weight
    assert result.score > 0.9  # the fake model is linear in the regions: LIME's model fits it


def test_same_seed_same_explanation_other_seed_other_samples(sample_arrays: Any) -> None:
    image = _slice(sample_arrays, 5)
    first = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=7)
    again = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=7)
    other = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=8)
    assert first.weights == again.weights
    assert first.intercept == again.intercept
    assert render_overlay(image, first) == render_overlay(image, again)
    assert first.weights != other.weights
    assert top_overlap(first, again) == 1.0
    assert 0.0 <= top_overlap(first, other) <= 1.0


def test_a_chosen_label_is_explained_instead_of_the_predicted_one(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    notumor = CLASS_NAMES.index("notumor")
    result = explain(image, spot_model, CLASS_NAMES, label=notumor, num_samples=200, seed=0)
    assert result.label == "notumor" and result.predicted_label == "glioma"
    # notumor falls as the spot brightens: the spot's regions now weigh against the class.
    assert result.top_regions(1)[0].weight < 0


def test_the_predict_function_gets_few_bounded_uint8_batches(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    batches: list[tuple[int, np.dtype, tuple[int, ...]]] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        batches.append((len(batch), batch.dtype, batch.shape[1:]))
        return spot_model(batch)

    explain(image, recording, CLASS_NAMES, num_samples=500, seed=0, batch_size=128)
    assert [n for n, _, _ in batches] == [128, 128, 128, 116]
    assert all(dtype == np.uint8 and shape == image.shape for _, dtype, shape in batches)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 grayscale"):
        explain(np.zeros((8, 8, 3), dtype=np.uint8), spot_model, CLASS_NAMES)
    with pytest.raises(ValueError, match="predict_fn returned"):
        explain(np.zeros((32, 32), dtype=np.uint8), lambda b: np.zeros((len(b), 2)), CLASS_NAMES, num_samples=10)


def test_top_regions_describe_place_and_size(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=0)
    regions = result.top_regions(6)
    assert len(regions) == 6
    assert [abs(r.weight) for r in regions] == sorted((abs(r.weight) for r in regions), reverse=True)
    for region in regions:
        x0, y0, x1, y1 = region.bbox
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert region.area_fraction == pytest.approx((result.segments == region.segment).mean(), abs=1e-4)
    assert sum(r.background for r in result.top_regions(100)) <= 1


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def test_overlay_is_the_scan_with_the_heat_map(sample_arrays: Any) -> None:
    image = _slice(sample_arrays)
    result = explain(image, spot_model, CLASS_NAMES, num_samples=200, seed=0)
    overlay = _png(render_overlay(image, result))
    assert overlay.size == (128, 128) and overlay.mode == "RGB"
    rgb = np.asarray(overlay, dtype=np.int64)
    red_minus_blue = rgb[..., 0] - rgb[..., 2]
    # Supporting regions (the spot) are warm, and the background is left as it was (gray).
    assert red_minus_blue[56, 56] > 40
    assert np.all(rgb[0, 0] == image[0, 0])


def test_overlay_keeps_the_scan_size_and_aspect_up_to_the_cap(sample_arrays: Any) -> None:
    pixels = _slice(sample_arrays)
    result = explain(pixels, spot_model, CLASS_NAMES, num_samples=100, seed=0)
    wide = np.asarray(Image.fromarray(pixels).resize((300, 200)))
    assert _png(render_overlay(wide, result)).size == (300, 200)
    assert _png(render_overlay(wide, result, max_side=150)).size == (150, 100)


def test_onnx_predict_fn_matches_the_served_classifier(tmp_path: Path, make_onnx: Any, sample_arrays: Any) -> None:
    contract = PreprocessingContract(layout="nhwc", scaling="raw", image_size=24)
    model_bytes, _ = make_onnx(contract)
    predict, got_contract = onnx_predict_fn(model_bytes)
    assert got_contract == contract
    (tmp_path / "model.onnx").write_bytes(model_bytes)
    served = OnnxClassifier("cnn", "1", tmp_path / "model.onnx")
    served.load()
    pixels, _ = sample_arrays(24)
    np.testing.assert_allclose(predict(pixels[:300]), served.predict_pixels(pixels[:300]), atol=1e-6)


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


def test_training_logs_overlays_per_class(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)
    logged = log_lime_overlays(spot_model_32, pixels, labels, "cnn", per_class=2, num_samples=60)
    assert logged == 8
    names = _artifacts(mlflow_run.info.run_id, mlflow_server.url, "explanations")
    assert "summary.json" in names
    pngs = [name for name in names if name.endswith(".png")]
    assert len(pngs) == 8
    assert {name.split("_")[0] for name in pngs} == set(CLASS_NAMES)
    from mlflow import MlflowClient

    local = MlflowClient(mlflow_server.url).download_artifacts(mlflow_run.info.run_id, "explanations/summary.json")
    summary = json.loads(Path(local).read_text())
    assert summary["family"] == "cnn" and len(summary["images"]) == 8
    assert all(len(image["regions"]) == 5 for image in summary["images"])


def test_training_overlays_respect_the_time_budget(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)

    def slow(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return spot_model_32(batch)

    logged = log_lime_overlays(slow, pixels, labels, "rf", per_class=2, num_samples=20, time_budget_s=0.1)
    assert logged == 1  # the first image always, then the budget is spent
    from mlflow import MlflowClient

    run = MlflowClient(mlflow_server.url).get_run(mlflow_run.info.run_id)
    assert run.data.tags["lime_truncated"] == "true"


def test_a_failing_model_does_not_fail_training(mlflow_run: Any, mlflow_server: Any, sample_arrays: Any) -> None:
    pixels, labels = sample_arrays(32)

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    assert log_lime_overlays(broken, pixels, labels, "snn", num_samples=20) == 0
    from mlflow import MlflowClient

    run = MlflowClient(mlflow_server.url).get_run(mlflow_run.info.run_id)
    assert "model exploded" in run.data.tags["lime_error"]
