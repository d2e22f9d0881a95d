"""The guard in inference: with a registered guard, a photo-like image is a 422 NOT_A_BRAIN_MRI through a real
process (refuse, the default); flag mode answers 200 with the flag; every answer carries the score; off and no
guard answer ``ood: null``; the champion is found through MlflowStore's public method; a guard fitted on another
input kind is refused rather than mis-scored.

The guarded MLflow and the refusing inference process are the session's (``guarded_services`` of
test_ood_routes.py, shared with the route tests): a registered guard in the session's shared MLflow would refuse
other tests' blank images, and starting MLflow is most of these tests' time.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from services.inference.guard import Guard
from services.inference.mlflow_store import MlflowStore
from services.training.ood_guard import OodGuard, guard_onnx
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import GUARD_METADATA_KEY, GUARD_REGISTERED_NAME
from tests.conftest import SampleArrays, fit_sample_guard
from tests.dicom_files import write_dicom
from tests.services.inference.test_ood_routes import GUARDED_MODELS, guarded_services, photo_like


@pytest.fixture(scope="module")
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sample_arrays: SampleArrays
) -> dict[str, str]:
    """The session's guarded MLflow (``mlflow``) and its inference process in refuse mode (``refuse``)."""
    return guarded_services(request.config, tmp_path_factory, sample_arrays, "refuse")


@pytest.fixture(scope="module")
def sample_guard(sample_arrays: SampleArrays, mobilenetv2_weights: Path) -> OodGuard:
    """A guard fitted as the session's registered one: on half the sample, its threshold from the other half."""
    return fit_sample_guard(sample_arrays, mobilenetv2_weights)


def _predict(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/rf/predict", files={"file": ("image.png", data, "image/png")}, timeout=60)


def test_real_process_refuses_a_photo_like_image(guarded: dict[str, str]) -> None:
    response = _predict(guarded["refuse"], photo_like())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "NOT_A_BRAIN_MRI"
    assert "does not look like a brain MRI" in error["message"]


def test_real_process_answers_an_mri_slice_with_its_score(guarded: dict[str, str], sample_images: dict) -> None:
    response = _predict(guarded["refuse"], sample_images["glioma"])
    assert response.status_code == 200, response.text
    ood = response.json()["ood"]
    assert ood["flag"] is False
    assert ood["score"] <= ood["threshold"]
    assert ood["guard_version"] == "1"


def _slice_as_dicom(jpeg: bytes, modality: str) -> bytes:
    return write_dicom(np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")), modality=modality)


def test_a_dicom_declaring_another_modality_is_refused_whatever_its_pixels(
    guarded: dict[str, str], sample_images: dict
) -> None:
    """An MRI slice's pixels in a file that says CT: the header decides (a head CT can look like an MR slice)."""
    response = httpx.post(
        f"{guarded['refuse']}/v1/models/rf/predict",
        files={"file": ("slice.dcm", _slice_as_dicom(sample_images["glioma"], "CT"), "application/dicom")},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "NOT_A_BRAIN_MRI"
    assert "declares modality CT" in error["message"]
    assert error["details"]["ood"]["declared_modality"] == "CT"
    assert error["details"]["ood"]["score"] <= error["details"]["ood"]["threshold"]  # the pixels alone pass


def test_in_flag_mode_a_dicom_of_another_modality_is_answered_and_referred_for_it(
    guarded: dict[str, str], inference_app_client: Any, sample_images: dict
) -> None:
    client = inference_app_client(tracking_uri=guarded["mlflow"], ood_mode="flag")
    data = _slice_as_dicom(sample_images["glioma"], "US")
    response = client.post("/v1/models/rf/predict", files={"file": ("slice.dcm", data, "application/dicom")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ood"]["flag"] is True and body["ood"]["declared_modality"] == "US"
    assert body["referral"] is True
    assert "declares modality US, not MR" in body["referral_reason"]


def test_the_same_slice_declared_mr_is_answered(guarded: dict[str, str], sample_images: dict) -> None:
    response = httpx.post(
        f"{guarded['refuse']}/v1/models/rf/predict",
        files={"file": ("slice.dcm", _slice_as_dicom(sample_images["glioma"], "MR"), "application/dicom")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["ood"]["flag"] is False
    assert response.json()["ood"]["declared_modality"] is None


def test_guard_is_not_listed_as_a_model(guarded: dict[str, str]) -> None:
    models = httpx.get(f"{guarded['refuse']}/v1/models", timeout=30).json()["models"]
    assert sorted(model["model"] for model in models) == sorted(GUARDED_MODELS)


def test_flag_mode_answers_200_with_the_flag(guarded: dict[str, str], inference_app_client: Any) -> None:
    client = inference_app_client(tracking_uri=guarded["mlflow"], ood_mode="flag")
    response = client.post("/v1/models/rf/predict", files={"file": ("image.png", photo_like(), "image/png")})
    assert response.status_code == 200, response.text
    ood = response.json()["ood"]
    assert ood["flag"] is True
    assert ood["score"] > ood["threshold"]


def test_off_mode_answers_without_a_verdict(guarded: dict[str, str], inference_app_client: Any) -> None:
    client = inference_app_client(tracking_uri=guarded["mlflow"], ood_mode="off")
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


def test_champion_version_names_the_guard_and_none_without_one(guarded: dict[str, str], tmp_path: Path) -> None:
    store = MlflowStore(guarded["mlflow"], tmp_path / "cache")
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
        Guard("7", path).load()
    assert caught.value.code == ErrorCode.INVALID_MODEL
    assert "version 7 was fitted on input" in caught.value.message
    current = tmp_path / "guard.onnx"
    current.write_bytes(guard_onnx(sample_guard))
    loaded = Guard("8", current)
    loaded.load()
    assert loaded.threshold == pytest.approx(sample_guard.threshold)
