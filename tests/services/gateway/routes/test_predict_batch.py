"""POST /v1/predict/batch through the gateway to the real inference process: one answer per file, in order, a bad
file its own error, bounded counts and sizes."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway.batch import plan_calls
from shared.kit.schemas import BatchPredictionOut, PredictionOut
from tests.error_body import error_body


def _batch(client: Any, files: list[bytes], **params: str) -> Any:
    parts = [("files", (f"Jane_Doe_{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    return client.post("/v1/predict/batch", params=params, files=parts)


def _predict(client: Any, data: bytes, **params: str) -> PredictionOut:
    response = client.post("/v1/predict", params=params, files={"file": ("scan.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    return PredictionOut.model_validate(response.json())


def _check_answers(client: Any, files: list[bytes], out: BatchPredictionOut, **params: str) -> None:
    """Every answered file as /v1/predict answers it alone."""
    for item in out.results:
        if item.ok:
            assert item.result is not None and item.error is None
            single = _predict(client, files[item.index], **params)
            assert (item.result.model, item.result.version, item.result.label) == (
                single.model,
                single.version,
                single.label,
            )
            # The calls run at once and inference may batch them together: a row of a batched run agrees with its
            # lone run to about 1e-6 (onnxruntime sums in another order), not bit for bit.
            assert item.result.probabilities == pytest.approx(single.probabilities, abs=1e-5)


def test_one_bad_file_among_good_ones(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    bad = b"Name: Jane Doe; MRN 0012345"
    files = [sample_images["glioma"], bad, sample_images["pituitary"], sample_images["notumor"]]
    response = _batch(gateway_client, files, model="cnn")
    assert response.status_code == 200, response.text
    assert "Jane" not in response.text and "0012345" not in response.text
    out = BatchPredictionOut.model_validate(response.json())
    assert [(item.index, item.ok) for item in out.results] == [(0, True), (1, False), (2, True), (3, True)]
    bad = out.results[1]
    assert bad.result is None and bad.error is not None
    assert (bad.error.code, bad.error.status) == ("INVALID_IMAGE", 415)
    _check_answers(gateway_client, files, out, model="cnn")


def test_version_and_alias(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    files = [sample_images["meningioma"], sample_images["glioma"]]
    out = BatchPredictionOut.model_validate(_batch(gateway_client, files, model="rf", version="champion").json())
    assert [item.result.version for item in out.results if item.result] == ["1", "1"]
    _check_answers(gateway_client, files, out, model="rf", version="champion")


def test_files_split_over_several_inference_calls_keep_their_order(
    inference_server: Any, gateway_app_client: Any, sample_images: dict[str, bytes]
) -> None:
    files = sorted(sample_images.values(), key=len)
    # An upload limit of the largest file: no two files fit in one call, so each goes in its own.
    client = gateway_app_client(inference_url=inference_server.url, max_upload_bytes=len(files[-1]))
    assert len(plan_calls([len(data) for data in files], len(files[-1]))) == len(files)
    response = _batch(client, [*files, b"", files[0]], model="snn")
    assert response.status_code == 200, response.text
    out = BatchPredictionOut.model_validate(response.json())
    assert [item.index for item in out.results] == list(range(len(files) + 2))
    assert [item.ok for item in out.results] == [True] * len(files) + [False, True]
    _check_answers(client, [*files, b"", files[0]], out, model="snn")


def test_oversize_file_is_its_own_413(inference_server: Any, gateway_app_client: Any, sample_images) -> None:
    small = min(sample_images.values(), key=len)
    client = gateway_app_client(inference_url=inference_server.url, max_upload_bytes=len(small))
    response = _batch(client, [b"\0" * (len(small) + 1), small], model="rf")
    assert response.status_code == 200, response.text
    out = BatchPredictionOut.model_validate(response.json())
    assert [item.ok for item in out.results] == [False, True]
    error = out.results[0].error
    assert error is not None and (error.code, error.status) == ("FILE_TOO_LARGE", 413)
    assert error.details == {"max_bytes": len(small)}


def test_too_many_files_is_422(inference_server: Any, gateway_app_client: Any, sample_images) -> None:
    client = gateway_app_client(inference_url=inference_server.url, max_batch_files=3)
    response = _batch(client, [sample_images["glioma"]] * 4, model="cnn")
    error = error_body(response, 422, "INVALID_REQUEST", request_id=True)
    assert error["details"] == {"max_files": 3}
    assert _batch(client, [sample_images["glioma"]] * 3, model="cnn").status_code == 200


def test_body_beyond_the_batch_bound_is_413(inference_server: Any, gateway_app_client: Any) -> None:
    client = gateway_app_client(inference_url=inference_server.url, max_upload_bytes=1000, max_batch_files=2)
    # Three files' worth of bytes, past 2 x 1000 plus the multipart framing: refused from the declared length.
    response = _batch(client, [b"\0" * 40_000, b"\0" * 40_000], model="cnn")
    error = error_body(response, 413, "FILE_TOO_LARGE", request_id=True)
    assert error["details"]["max_files"] == 2 and error["details"]["max_file_bytes"] == 1000


def test_a_batch_may_be_larger_than_one_upload(inference_server: Any, gateway_app_client: Any, sample_images) -> None:
    # Each file is within the one-file limit; together they are not, which the batch route allows.
    small = min(sample_images.values(), key=len)
    client = gateway_app_client(inference_url=inference_server.url, max_upload_bytes=len(small) + 80_000)
    files = [small + b"\0" * 80_000] * 2  # JPEG decoders ignore bytes after the end of the image
    response = _batch(client, files, model="rf")
    assert response.status_code == 200, response.text
    assert [item["ok"] for item in response.json()["results"]] == [True, True]


def test_request_errors(gateway_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["glioma"]
    error = error_body(_batch(gateway_client, [image], model="vgg16"), 404, "MODEL_NOT_FOUND", request_id=True)
    assert "rf, snn, cnn, mobilenetv2" in error["message"]
    error_body(_batch(gateway_client, [image], model="cnn", version="9"), 404, "VERSION_NOT_FOUND")
    error_body(_batch(gateway_client, [image]), 422, "INVALID_REQUEST")
    no_files = gateway_client.post("/v1/predict/batch", params={"model": "cnn"}, files={"file": ("a.jpg", image)})
    error = error_body(no_files, 422, "INVALID_REQUEST")
    assert error["details"]["problems"] == [{"field": "body.files", "problem": "Field required"}]


def test_inference_down_is_503(gateway_app_client: Any, unused_url: str, sample_images: dict[str, bytes]) -> None:
    client = gateway_app_client(inference_url=unused_url)
    error_body(_batch(client, [sample_images["glioma"]], model="rf"), 503, "UPSTREAM_UNAVAILABLE")


def test_openapi_declares_every_status(gateway_client: Any) -> None:
    route = gateway_client.get("/openapi.json").json()["paths"]["/v1/predict/batch"]["post"]
    assert route["summary"] and route["description"]
    assert {"400", "404", "413", "422", "502", "503"} <= set(route["responses"])


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "max_files", "expected"),
    [
        ([], 10, 5, []),
        ([3, 3, 3], 10, 5, [[0, 1, 2]]),
        ([6, 6, 3], 10, 5, [[0], [1, 2]]),
        ([20, 1], 10, 5, [[0], [1]]),  # a file beyond the bound goes alone
        ([1, 1, 1, 1, 1], 10, 2, [[0, 1], [2, 3], [4]]),
    ],
)
def test_plan_calls(sizes: list[int], max_bytes: int, max_files: int, expected: list[list[int]]) -> None:
    assert plan_calls(sizes, max_bytes, max_files) == expected
