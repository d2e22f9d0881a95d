"""DICOM uploads through the real services: a gateway process in front of the inference and explainer processes.

A DICOM file written from a JPEG answers like the JPEG itself (same label, probabilities within 1e-3) for every
model family, on every endpoint that takes an image; multi-frame files need `frame`; what cannot be decoded is a
415 naming its transfer syntax; patient data is never in an answer or a log line.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.uid import RLELossless

from deploy.processes import ManagedProcess, free_port, start_service
from shared.core.imaging import decode_grayscale
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, example_file, with_patient_name, write_dicom
from tests.error_body import error_body
from tests.services.gateway import test_web_browser as web

TOLERANCE = 1e-3
# The web page's browser (Debian's Chromium through Playwright), as the gateway's browser tests drive it.
browser_page = web.browser_page
SECRETS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID)


@pytest.fixture(scope="module")
def gateway(
    inference_server: ManagedProcess, explainer_server: ManagedProcess, service_logs: Path
) -> Iterator[ManagedProcess]:
    env = {
        "BT_GATEWAY_INFERENCE_URL": inference_server.url,
        "BT_GATEWAY_EXPLAINER_URL": explainer_server.url,
        # On a busy CI machine a slow answer must not become UPSTREAM_TIMEOUT here (timeouts are tested elsewhere).
        "BT_GATEWAY_PREDICT_TIMEOUT_S": "30",
    }
    server = start_service("gateway", free_port(), env, service_logs / "gateway-dicom.log", as_module=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: ManagedProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120.0, trust_env=False) as http:
        yield http


def dicom_variants(jpeg: bytes) -> dict[str, tuple[bytes, int | None]]:
    """DICOM files (and the frame to ask for) that all hold the JPEG's decoded pixels."""
    gray = np.asarray(decode_grayscale(jpeg))
    return {
        "8-bit": (write_dicom(gray), None),
        "16-bit rescaled and windowed": (
            write_dicom(gray.astype(np.uint16) * 16 + 100, bits_stored=13, rescale=(0.0625, -6.25), window=(128, 256)),
            None,
        ),
        "MONOCHROME1": (write_dicom(255 - gray, photometric="MONOCHROME1"), None),
        "RLE lossless": (write_dicom(gray, transfer_syntax=RLELossless), None),
        "frame 1 of 3": (three_frames(gray), 1),
    }


def three_frames(gray: np.ndarray) -> bytes:
    return write_dicom(np.stack([255 - gray, gray, gray // 2]), frames=True)


def upload(data: bytes, name: str = "scan.dcm") -> dict[str, Any]:
    return {"file": (name, data, "application/dicom")}


def query(frame: int | None, **params: Any) -> dict[str, Any]:
    return {**params, **({"frame": frame} if frame is not None else {})}


def assert_same_answer(dicom: dict[str, Any], jpeg: dict[str, Any], what: str) -> None:
    assert dicom["label"] == jpeg["label"], what
    assert dicom["probabilities"].keys() == jpeg["probabilities"].keys()
    for name, probability in jpeg["probabilities"].items():
        assert abs(dicom["probabilities"][name] - probability) <= TOLERANCE, (what, name)


@pytest.mark.parametrize("label", ["glioma", "pituitary"])
def test_dicom_answers_like_its_jpeg_for_every_family(
    client: httpx.Client, model_zoo: Any, sample_images: dict[str, bytes], label: str
) -> None:
    jpeg = sample_images[label]
    variants = dicom_variants(jpeg)
    for model in model_zoo.versions:
        expected = client.post("/v1/predict", params={"model": model}, files=upload(jpeg, "scan.jpg"))
        assert expected.status_code == 200, expected.text
        for variant, (data, frame) in variants.items():
            answer = client.post("/v1/predict", params=query(frame, model=model), files=upload(data))
            assert answer.status_code == 200, (model, variant, answer.text)
            assert_same_answer(answer.json(), expected.json(), f"{model}, {variant}")


def test_compare_with_a_dicom_frame(client: httpx.Client, model_zoo: Any, sample_images: dict[str, bytes]) -> None:
    jpeg = sample_images["meningioma"]
    dicom = three_frames(np.asarray(decode_grayscale(jpeg)))
    expected = client.post("/v1/compare", files=upload(jpeg, "scan.jpg"))
    answer = client.post("/v1/compare", params={"frame": 1}, files=upload(dicom))
    assert answer.status_code == expected.status_code == 200, answer.text
    by_model = {item["model"]: item for item in expected.json()["results"]}
    assert {item["model"] for item in answer.json()["results"]} == set(model_zoo.versions)
    for item in answer.json()["results"]:
        assert item["ok"], item
        assert_same_answer(item["result"], by_model[item["model"]]["result"], item["model"])
    error = error_body(client.post("/v1/compare", files=upload(dicom)), 422, "INVALID_REQUEST")
    assert "3 frames" in error["message"]


def test_batch_mixes_jpegs_and_dicoms_each_with_its_own_answer(
    client: httpx.Client, sample_images: dict[str, bytes]
) -> None:
    jpeg = sample_images["notumor"]
    gray = np.asarray(decode_grayscale(jpeg))
    files = [("files", ("a.jpg", jpeg, "image/jpeg")), ("files", ("b.dcm", write_dicom(gray), "application/dicom"))]
    files.append(("files", ("c.dcm", three_frames(gray), "application/dicom")))
    answer = client.post("/v1/predict/batch", params={"model": "cnn"}, files=files)
    assert answer.status_code == 200, answer.text
    first, second, third = answer.json()["results"]
    assert first["ok"] and second["ok"]
    assert_same_answer(second["result"], first["result"], "8-bit DICOM in a batch")
    assert not third["ok"] and (third["error"]["code"], third["error"]["status"]) == ("INVALID_REQUEST", 422)
    # The frame applies to every file of the batch.
    framed = client.post("/v1/predict/batch", params={"model": "cnn", "frame": 1}, files=[files[2]])
    assert framed.status_code == 200, framed.text
    assert_same_answer(framed.json()["results"][0]["result"], first["result"], "frame 1 in a batch")


def test_explanations_of_a_dicom_frame_are_those_of_its_jpeg(
    client: httpx.Client, sample_images: dict[str, bytes]
) -> None:
    jpeg = sample_images["glioma"]
    params = {"model": "rf", "num_samples": 50, "seed": 3, "num_regions": 3}
    expected = client.post("/v1/explain", params=params, files=upload(jpeg, "scan.jpg"))
    dicom = three_frames(np.asarray(decode_grayscale(jpeg)))
    answer = client.post("/v1/explain", params={**params, "frame": 1}, files=upload(dicom))
    assert answer.status_code == expected.status_code == 200, answer.text
    assert_same_answer(answer.json(), expected.json(), "explanation")
    for key in ("regions", "opposing_regions", "overlay_png", "fit_r2", "predicted_label"):
        assert answer.json()[key] == expected.json()[key], key
    error_body(client.post("/v1/explain", params=params, files=upload(dicom)), 422, "INVALID_REQUEST")


def test_frames_missing_or_out_of_range_are_422(client: httpx.Client, sample_images: dict[str, bytes]) -> None:
    jpeg = sample_images["glioma"]
    dicom = three_frames(np.asarray(decode_grayscale(jpeg)))
    error = error_body(client.post("/v1/predict", params={"model": "rf"}, files=upload(dicom)), 422, "INVALID_REQUEST")
    assert "3 frames" in error["message"] and "frame" in error["message"]
    assert error["details"] == {"frames": 3}
    error = error_body(
        client.post("/v1/predict", params={"model": "rf", "frame": 3}, files=upload(dicom)), 422, "INVALID_REQUEST"
    )
    assert "0 to 2" in error["message"]
    error_body(
        client.post("/v1/predict", params={"model": "rf", "frame": -1}, files=upload(dicom)), 422, "INVALID_REQUEST"
    )
    jpeg_frame = client.post("/v1/predict", params={"model": "rf", "frame": 1}, files=upload(jpeg, "scan.jpg"))
    assert "DICOM" in error_body(jpeg_frame, 422, "INVALID_REQUEST")["message"]


def test_the_open_inference_protocol_takes_one_frame_dicoms(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    jpeg = sample_images["glioma"]
    gray = np.asarray(decode_grayscale(jpeg))

    def infer(data: bytes) -> httpx.Response:
        element = base64.b64encode(data).decode("ascii")
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [element]}]}
        return httpx.post(f"{inference_server.url}/v2/models/snn/infer", json=body, timeout=60.0, trust_env=False)

    expected = infer(jpeg)
    answer = infer(write_dicom(gray))
    assert answer.status_code == expected.status_code == 200, answer.text
    got, want = (np.asarray(r.json()["outputs"][0]["data"]) for r in (answer, expected))
    assert np.abs(got - want).max() <= TOLERANCE
    # No place for a frame in the protocol: a multi-frame file is the protocol's 400, with the same message.
    refused = infer(three_frames(gray))
    assert refused.status_code == 400 and "3 frames" in refused.json()["error"]


@pytest.mark.parametrize(
    ("name", "named"),
    # JPEG Lossless (Process 14) has no decoder here; JPEG-LS has one where pyjpegls is installed (highdicom's).
    [("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless"), ("JPGExtended.dcm", "JPEG Extended")],
)
def test_an_undecodable_syntax_is_a_415_naming_it(client: httpx.Client, name: str, named: str) -> None:
    data = with_patient_name(example_file(name))
    for path, params in (("/v1/predict", {"model": "snn"}), ("/v1/compare", {}), ("/v1/explain", {"model": "rf"})):
        error = error_body(client.post(path, params=params, files=upload(data)), 415, "UNSUPPORTED_DICOM")
        assert named in error["message"], path


def test_a_dicom_without_pixel_data_is_a_415(client: httpx.Client) -> None:
    data = with_patient_name(example_file("rtplan.dcm"))
    error = error_body(client.post("/v1/predict", params={"model": "rf"}, files=upload(data)), 415, "UNSUPPORTED_DICOM")
    assert "no pixel data" in error["message"]


def test_pydicom_example_mr_is_classified(client: httpx.Client, model_zoo: Any) -> None:
    data = with_patient_name(example_file("MR_small.dcm"))
    answer = client.post("/v1/compare", files=upload(data))
    assert answer.status_code == 200, answer.text
    assert all(item["ok"] for item in answer.json()["results"])


def test_no_patient_data_in_any_answer_or_log(
    client: httpx.Client,
    sample_images: dict[str, bytes],
    gateway: ManagedProcess,
    inference_server: ManagedProcess,
    explainer_server: ManagedProcess,
) -> None:
    gray = np.asarray(decode_grayscale(sample_images["glioma"]))
    files = {
        "ok": (write_dicom(gray), None),
        "no frame": (three_frames(gray), None),
        "bad frame": (three_frames(gray), 9),
        "JPEG Lossless": (with_patient_name(example_file("SC_rgb_jpeg_gdcm.dcm")), None),
        "no pixels": (with_patient_name(example_file("rtplan.dcm")), None),
        "truncated": (write_dicom(gray)[:-700], None),
    }
    routes = (
        ("/v1/predict", {"model": "rf"}),
        ("/v1/compare", {}),
        ("/v1/explain", {"model": "rf", "num_samples": 50}),
    )
    said = []
    for data, frame in files.values():
        for path, params in routes:
            response = client.post(path, params=query(frame, **params), files=upload(data))
            assert response.status_code < 500, response.text
            said.append(response.text)
        batch = client.post(
            "/v1/predict/batch",
            params=query(frame, model="rf"),
            files=[("files", ("x.dcm", data, "application/dicom"))],
        )
        said.append(batch.text)
    for process in (gateway, inference_server, explainer_server):
        said.append(process.log_path.read_text(errors="replace"))
    leaks = [secret for secret in SECRETS if any(secret in text for text in said)]
    assert not leaks, f"patient data found in an answer or a log: {leaks}"


def test_every_image_route_declares_frame(
    client: httpx.Client, inference_server: ManagedProcess, explainer_server: ManagedProcess
) -> None:
    routes = {
        client.base_url: ["/v1/predict", "/v1/predict/batch", "/v1/compare", "/v1/explain"],
        inference_server.url: ["/v1/models/{model}/predict", "/v1/models/{model}/predict-batch", "/v1/compare"],
        explainer_server.url: ["/v1/explain"],
    }
    for url, paths in routes.items():
        schema = httpx.get(f"{url}/openapi.json", trust_env=False).json()
        for path in paths:
            parameters = {p["name"]: p for p in schema["paths"][path]["post"]["parameters"]}
            assert "frame" in parameters, (url, path)
            assert parameters["frame"]["in"] == "query"


def test_the_web_page_classifies_a_dicom_file(
    browser_page: Any, gateway: ManagedProcess, client: httpx.Client, sample_images: dict[str, bytes], tmp_path: Path
) -> None:
    jpeg = sample_images["pituitary"]
    gray = np.asarray(decode_grayscale(jpeg))
    path = tmp_path / "slice.dcm"
    path.write_bytes(write_dicom(gray))
    expected = client.post("/v1/compare", files=upload(jpeg, "scan.jpg")).json()["results"]
    page = browser_page
    web._open(page, gateway.url)
    assert ".dcm" in (page.get_attribute("#file-input", "accept") or "")
    web._upload(page, str(path), 1)
    for item in expected:
        card = web._card(page, item["model"])
        assert card.get_attribute("data-state") == "done", card.locator(".card-status").inner_text()
        assert card.locator(".label").get_attribute("data-label") == item["result"]["label"]
    assert page.locator("#preview-image").is_hidden()  # browsers cannot show DICOM
    assert "DICOM" in page.locator("#preview-caption").inner_text()
    # A multi-frame file without a frame: the server's message, said once for the file.
    series = {"name": "series.dcm", "mimeType": "application/dicom", "buffer": three_frames(gray)}
    web._upload(page, series, 2)
    assert "3 frames" in page.locator("#message").inner_text()
    assert page.script_errors == []
