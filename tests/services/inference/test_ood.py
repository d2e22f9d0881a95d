"""The guard in inference: with a registered guard, a photo-like image is a 422 NOT_A_BRAIN_MRI through a real
process (refuse, the default); flag mode answers 200 with the flag; every answer carries the score; off and no
guard answer ``ood: null``.

Its own MLflow server: a registered guard in the session's shared one would refuse other tests' blank images.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from services.inference.mlflow_store import MlflowStore
from services.inference.ood import LoadedGuard
from services.training.ood_guard import GUARD_IMAGE_SIZE, OodGuard, files_input, fit_guard, guard_onnx
from shared.contract import PreprocessingContract
from shared.dataset import SAMPLE_DATA_DIR, discover
from shared.errors import ErrorCode, ServiceError
from shared.guard_input import GuardInput
from shared.schemas import GUARD_METADATA_KEY, GUARD_REGISTERED_NAME
from tests.conftest import fit_on_sample, register_onnx_model, sklearn_to_onnx


def photo_like() -> bytes:
    """A bright, textured RGB picture: nothing like a slice on a dark background."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:200, 0:200] / 200
    base = np.stack([xx * 200 + 40, yy * 180 + 60, (1 - xx) * 150 + 80], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sample_guard(sample_arrays: Any) -> OodGuard:
    """A guard fitted on half the sample, its threshold the highest score of the other half."""
    pixels, _ = sample_arrays(GUARD_IMAGE_SIZE)
    inputs = files_input(discover(SAMPLE_DATA_DIR).train.paths, pixels)
    halves = [GuardInput(inputs.pixels[start::2], inputs.features[start::2]) for start in (0, 1)]
    return fit_guard(halves[0], halves[1], quantile=1.0)


@pytest.fixture(scope="module")
def guarded_mlflow(tmp_path_factory: pytest.TempPathFactory, sample_arrays: Any, sample_guard: OodGuard
                   ) -> Iterator[ManagedProcess]:  # fmt: skip
    """An MLflow server holding one rf model and a guard fitted on the sample (its champion)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from services.training.ood_guard import register_guard

    folder = tmp_path_factory.mktemp("ood-mlflow")
    server = start_mlflow(folder / "store", free_port(), folder / "mlflow.log")
    contract = PreprocessingContract(layout="flat", scaling="unit", image_size=32)
    fitted = fit_on_sample(LogisticRegression(max_iter=200), 32, sample_arrays)
    register_onnx_model(server.url, "rf", sklearn_to_onnx(fitted, contract))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    try:
        with mlflow.start_run(run_name="guard"):
            register_guard(sample_guard, "tests")
    finally:
        mlflow.set_tracking_uri(previous)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def refusing_inference(guarded_mlflow: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("ood-inference")
    env = {
        "MLFLOW_TRACKING_URI": guarded_mlflow.url,
        "BT_INFERENCE_TRACKING_URI": guarded_mlflow.url,
        "BT_INFERENCE_CACHE_DIR": str(folder / "cache"),
    }
    server = start_service("inference", free_port(), env, folder / "inference.log")
    yield server.url
    server.stop()


def _predict(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/rf/predict", files={"file": ("image.png", data, "image/png")}, timeout=60)


def test_real_process_refuses_a_photo_like_image(refusing_inference: str) -> None:
    response = _predict(refusing_inference, photo_like())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "NOT_A_BRAIN_MRI"
    assert "does not look like a brain MRI" in error["message"]


def test_real_process_answers_an_mri_slice_with_its_score(refusing_inference: str, sample_images: dict) -> None:
    response = _predict(refusing_inference, sample_images["glioma"])
    assert response.status_code == 200, response.text
    ood = response.json()["ood"]
    assert ood["flag"] is False
    assert ood["score"] <= ood["threshold"]
    assert ood["guard_version"] == "1"


def test_guard_is_not_listed_as_a_model(refusing_inference: str) -> None:
    models = httpx.get(f"{refusing_inference}/v1/models", timeout=30).json()["models"]
    assert [model["model"] for model in models] == ["rf"]


def test_flag_mode_answers_200_with_the_flag(guarded_mlflow: ManagedProcess, inference_app_client: Any) -> None:
    client = inference_app_client(tracking_uri=guarded_mlflow.url, ood_mode="flag")
    response = client.post("/v1/models/rf/predict", files={"file": ("image.png", photo_like(), "image/png")})
    assert response.status_code == 200, response.text
    ood = response.json()["ood"]
    assert ood["flag"] is True
    assert ood["score"] > ood["threshold"]


def test_off_mode_answers_without_a_verdict(guarded_mlflow: ManagedProcess, inference_app_client: Any) -> None:
    client = inference_app_client(tracking_uri=guarded_mlflow.url, ood_mode="off")
    response = client.post("/v1/models/rf/predict", files={"file": ("image.png", photo_like(), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["ood"] is None


def test_without_a_registered_guard_nothing_is_refused(model_zoo: Any, inference_app_client: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri)
    response = client.post("/v1/models/rf/predict", files={"file": ("image.png", photo_like(), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["ood"] is None


def test_bad_mode_is_refused_at_start() -> None:
    from pydantic import ValidationError

    from services.inference.config import Settings

    with pytest.raises(ValidationError):
        Settings(ood_mode="maybe", cache_dir=Path("/tmp/unused"))


def test_champion_version_names_the_guard_and_none_without_one(guarded_mlflow: ManagedProcess, tmp_path: Path) -> None:
    store = MlflowStore(guarded_mlflow.url, tmp_path / "cache")
    found = store.champion_version(GUARD_REGISTERED_NAME)
    assert found is not None and found.version == "1" and found.onnx_sha256
    assert store.champion_version("brain-tumor-never-registered") is None


def test_a_guard_fitted_on_another_input_is_refused_not_misscored(sample_guard: OodGuard, tmp_path: Path) -> None:
    """A guard from before input kinds (its metadata names none) would be fed the wrong input: INVALID_MODEL."""
    import onnx

    proto = onnx.load_from_string(guard_onnx(sample_guard))
    meta = {key: value for key, value in sample_guard.metadata().items() if key != "input_kind"}
    onnx.helper.set_model_props(proto, {GUARD_METADATA_KEY: json.dumps(meta)})
    path = tmp_path / "old-guard.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ServiceError) as caught:
        LoadedGuard.open("7", path)
    assert caught.value.code == ErrorCode.INVALID_MODEL
    assert "version 7 was fitted on input" in caught.value.message
    current = tmp_path / "guard.onnx"
    current.write_bytes(guard_onnx(sample_guard))
    assert LoadedGuard.open("8", current).threshold == pytest.approx(sample_guard.threshold)
