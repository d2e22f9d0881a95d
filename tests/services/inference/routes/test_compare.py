"""POST /v1/compare (one image, several models) and POST /v1/models/{model}/predict-batch (several images, one
model), in process, against the real zoo: the same answers as one predict per model or per file, one decode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from shared.core import imaging
from shared.kit.schemas import PREDICT_BATCH_MAX_FILES, BatchPredictionOut, CompareOut, PredictionOut
from tests.error_body import error_body

FAMILIES = ["rf", "snn", "cnn", "mobilenetv2"]


def _compare(client: Any, data: bytes, models: list[str]) -> Any:
    return client.post("/v1/compare", params=[("models", m) for m in models], files={"file": ("a.jpg", data)})


def _predict(client: Any, model: str, data: bytes, **params: str) -> PredictionOut:
    response = client.post(f"/v1/models/{model}/predict", params=params, files={"file": ("a.jpg", data)})
    assert response.status_code == 200, response.text
    return PredictionOut.model_validate(response.json())


def _batch(client: Any, model: str, files: list[bytes], **params: str) -> Any:
    parts = [("files", (f"scan{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    return client.post(f"/v1/models/{model}/predict-batch", params=params, files=parts)


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every image-file decode in this process (the real decoder still does the work)."""
    calls = [0]
    real = imaging.decode_grayscale

    def counting(data: bytes, frame: int | None = None) -> Image.Image:
        calls[0] += 1
        return real(data, frame)

    monkeypatch.setattr(imaging, "decode_grayscale", counting)
    return calls


def test_compare_equals_one_predict_per_model(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["meningioma"]
    response = _compare(inference_client, image, FAMILIES)
    assert response.status_code == 200, response.text
    out = CompareOut.model_validate(response.json())
    assert [item.model for item in out.results] == FAMILIES
    for item in out.results:
        assert item.ok and item.error is None and item.result is not None
        single = _predict(inference_client, item.model, image)
        assert (item.result.version, item.result.label) == (single.version, single.label)
        assert item.result.probabilities == pytest.approx(single.probabilities, abs=1e-6)
    assert out.labels == {item.model: item.result.label for item in out.results if item.result}
    assert out.agree == (len(set(out.labels.values())) == 1)


def test_compare_decodes_the_image_once(
    inference_client: Any, sample_images: dict[str, bytes], count_decodes: list[int]
) -> None:
    image = sample_images["glioma"]
    for model in FAMILIES:  # loads every model first, and shows the counter sees the predict path's decodes
        _predict(inference_client, model, image)
    assert count_decodes[0] == len(FAMILIES)
    # Four models at two contract sizes (32 and 24 px): still one decode.
    response = _compare(inference_client, image, FAMILIES)
    assert response.status_code == 200, response.text
    assert all(item["ok"] for item in response.json()["results"])
    assert count_decodes[0] == len(FAMILIES) + 1


def _runs(model: str, version: str) -> tuple[float, float]:
    """(onnxruntime runs, images in them) recorded so far for a model version in this process."""
    labels = {"model": model, "version": version}
    count = REGISTRY.get_sample_value("bt_inference_batch_size_count", labels) or 0.0
    return count, REGISTRY.get_sample_value("bt_inference_batch_size_sum", labels) or 0.0


def test_compare_runs_are_recorded_one_per_model(
    inference_client: Any, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    versions = {model: model_zoo.default_version(model) for model in FAMILIES}
    before = {model: _runs(model, version) for model, version in versions.items()}
    assert _compare(inference_client, sample_images["glioma"], FAMILIES).status_code == 200
    for model, version in versions.items():
        runs, images = _runs(model, version)
        assert (runs - before[model][0], images - before[model][1]) == (1.0, 1.0), model


def test_a_model_that_cannot_answer_is_its_own_entry(inference_client: Any, sample_images) -> None:
    response = _compare(inference_client, sample_images["glioma"], ["rf", "resnet50", "cnn", "rf"])
    assert response.status_code == 200, response.text
    out = CompareOut.model_validate(response.json())
    by_model = {item.model: item for item in out.results}
    assert list(by_model) == ["rf", "resnet50", "cnn"]  # order kept, duplicates dropped
    assert by_model["rf"].ok and by_model["cnn"].ok
    missing = by_model["resnet50"]
    assert not missing.ok and missing.result is None and missing.error is not None
    assert (missing.error["code"], missing.error["status"]) == ("MODEL_NOT_FOUND", 404)
    assert set(out.labels) == {"rf", "cnn"}


def test_a_file_that_is_not_an_image_is_one_415(inference_client: Any) -> None:
    response = _compare(inference_client, b"Name: Jane Doe; not a picture", ["rf", "cnn"])
    error_body(response, 415, "INVALID_IMAGE")
    assert "Jane" not in response.text


def test_no_decode_when_no_model_can_answer(inference_client: Any, count_decodes: list[int]) -> None:
    response = _compare(inference_client, b"not an image either", ["resnet50", "vgg16"])
    assert response.status_code == 200, response.text
    out = CompareOut.model_validate(response.json())
    assert [item.error["code"] for item in out.results if item.error] == ["MODEL_NOT_FOUND"] * 2
    assert (out.labels, out.agree) == ({}, False)
    assert count_decodes[0] == 0


@pytest.mark.parametrize(
    "models",
    [[], ["rf,cnn"], ["../etc"], [f"m{i}" for i in range(17)]],
    ids=["none", "comma-separated", "malformed", "too-many"],
)
def test_bad_model_lists_are_422(inference_client: Any, sample_images: dict[str, bytes], models: list[str]) -> None:
    error_body(_compare(inference_client, sample_images["glioma"], models), 422, "INVALID_REQUEST")


def test_batch_with_bad_files_among_good_ones(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    files = [sample_images["glioma"], b"Name: Jane Doe", sample_images["pituitary"], b""]
    response = _batch(inference_client, "cnn", files)
    assert response.status_code == 200, response.text
    assert "Jane" not in response.text
    out = BatchPredictionOut.model_validate(response.json())
    assert [(item.index, item.ok) for item in out.results] == [(0, True), (1, False), (2, True), (3, False)]
    for index in (0, 2):
        result = out.results[index].result
        assert result is not None
        single = _predict(inference_client, "cnn", files[index])
        assert (result.model, result.version, result.label) == ("cnn", single.version, single.label)
        assert result.probabilities == pytest.approx(single.probabilities, abs=1e-6)
    for index in (1, 3):
        error = out.results[index].error
        assert error is not None and (error.code, error.status) == ("INVALID_IMAGE", 415)


def test_batch_is_one_run(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    before = _runs("mobilenetv2", "1")
    response = _batch(inference_client, "mobilenetv2", [sample_images["glioma"], b"", sample_images["notumor"]])
    assert response.status_code == 200, response.text
    runs, images = _runs("mobilenetv2", "1")
    assert (runs - before[0], images - before[1]) == (1.0, 2.0)  # the two images, the bad file left out


def test_batch_names_the_version_it_resolved(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    response = _batch(inference_client, "rf", [sample_images["notumor"]] * 3, version="latest")
    assert response.status_code == 200, response.text
    out = BatchPredictionOut.model_validate(response.json())
    assert [item.result.version for item in out.results if item.result] == ["2", "2", "2"]
    assert len({tuple(item.result.probabilities.values()) for item in out.results if item.result}) == 1


def test_batch_oversize_file_is_its_own_413(
    model_zoo: Any, inference_app_client: Callable[..., Any], sample_images: dict[str, bytes]
) -> None:
    small = min(sample_images.values(), key=len)
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_upload_bytes=len(small))
    response = _batch(client, "snn", [small, small + b"\0" * 100])
    assert response.status_code == 200, response.text
    out = BatchPredictionOut.model_validate(response.json())
    assert out.results[0].ok
    error = out.results[1].error
    assert error is not None and (error.code, error.status) == ("FILE_TOO_LARGE", 413)
    assert error.details == {"max_bytes": len(small)}


def test_batch_request_errors(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["glioma"]
    error = error_body(_batch(inference_client, "cnn", [image] * (PREDICT_BATCH_MAX_FILES + 1)), 422, "INVALID_REQUEST")
    assert error["details"] == {"max_files": PREDICT_BATCH_MAX_FILES}
    error_body(_batch(inference_client, "vgg16", [image]), 404, "MODEL_NOT_FOUND")
    error_body(_batch(inference_client, "cnn", [image], version="9"), 404, "VERSION_NOT_FOUND")
    no_files = inference_client.post("/v1/models/cnn/predict-batch", files={"other": ("a", b"x")})
    error_body(no_files, 422, "INVALID_REQUEST")


def test_openapi_declares_every_status(inference_client: Any) -> None:
    paths = inference_client.get("/openapi.json").json()["paths"]
    assert {"400", "413", "415", "422"} <= set(paths["/v1/compare"]["post"]["responses"])
    batch = paths["/v1/models/{model}/predict-batch"]["post"]["responses"]
    assert {"400", "404", "413", "422", "500", "503"} <= set(batch)
