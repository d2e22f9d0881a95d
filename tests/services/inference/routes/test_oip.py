"""The Open Inference Protocol (KServe V2) under /v2: driven by a real third-party client, tritonclient.http,
against the real inference process, and over raw HTTP in process for the protocol's edges."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.imaging import decode_to_array, to_model_input

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

FAMILIES = ["rf", "snn", "cnn", "mobilenetv2"]


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(inference_server: Any) -> Iterator[Any]:
    """tritonclient's HTTP client on the inference process, once its default models are preloaded."""
    client = tritonclient_http.InferenceServerClient(url=inference_server.url.removeprefix("http://"))
    deadline = time.monotonic() + 60
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1_probabilities(inference_server: Any) -> Iterator[Any]:
    """``get(model, image, version=None) -> (probabilities in class order, version)`` from /v1 predict."""
    with httpx.Client(base_url=inference_server.url, trust_env=False, timeout=30) as http:

        def get(model: str, image: bytes, version: str | None = None) -> tuple[np.ndarray, str]:
            params = {"version": version} if version else {}
            response = http.post(f"/v1/models/{model}/predict", params=params, files={"file": ("s.jpg", image)})
            assert response.status_code == 200, response.text
            body = response.json()
            return np.array([body["probabilities"][name] for name in CLASS_NAMES]), body["version"]

        yield get


def _tensor(model_zoo: Any, model: str, images: list[bytes], version: str | None = None) -> np.ndarray:
    contract = model_zoo.version(model, version or model_zoo.default_version(model)).contract
    pixels = np.stack([decode_to_array(image, contract.image_size) for image in images])
    return to_model_input(pixels, contract).astype(np.float32)


def _tensor_input(model_zoo: Any, model: str, tensor: np.ndarray, binary: bool) -> Any:
    name = model_zoo.version(model, model_zoo.default_version(model)).contract.input_name
    tensor_input = tritonclient_http.InferInput(name, list(tensor.shape), "FP32")
    tensor_input.set_data_from_numpy(tensor, binary_data=binary)
    return tensor_input


def _image_input(images: list[bytes], binary: bool) -> Any:
    # JSON strings cannot hold arbitrary bytes: without the binary extension the files travel as base64.
    elements = images if binary else [base64.b64encode(image) for image in images]
    image_input = tritonclient_http.InferInput("image", [len(images)], "BYTES")
    image_input.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return image_input


def _infer(triton: Any, model: str, model_input: Any, binary: bool, version: str = "") -> Any:
    wanted = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)]
    return triton.infer(model, [model_input], model_version=version, outputs=wanted)


def _protocol_error(response: Any, status: int) -> str:
    """The protocol's error body: exactly {"error": "<message>"}; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]
    assert response.headers["x-request-id"]
    return body["error"]


# -- tritonclient against the real process ---------------------------------------------------------


def test_server_is_live_and_ready_and_describes_itself(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "brain-tumor-inference"
    assert metadata["version"]
    assert metadata["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("model", FAMILIES)
def test_model_metadata_advertises_the_tensor_and_the_image_input(triton: Any, model_zoo: Any, model: str) -> None:
    contract = model_zoo.version(model, model_zoo.default_version(model)).contract
    metadata = triton.get_model_metadata(model)
    assert metadata["name"] == model
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["versions"] == sorted((v.version for v in model_zoo.versions[model]), key=int, reverse=True)
    tensor_shape = [-1, contract.image_size**2] if contract.layout == "flat" else [-1, *[contract.image_size] * 2, 1]
    assert metadata["inputs"] == [
        {"name": contract.input_name, "datatype": "FP32", "shape": tensor_shape},
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
    ]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASS_NAMES)]}]
    assert triton.is_model_ready(model)  # the default version is preloaded


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", FAMILIES)
def test_infer_every_family_with_a_tensor_and_with_the_file_equals_v1_predict(
    triton: Any, model_zoo: Any, v1_probabilities: Any, sample_images: dict[str, bytes], model: str, binary: bool
) -> None:
    image = sample_images["glioma"]
    expected, version = v1_probabilities(model, image)
    tensor = _tensor(model_zoo, model, [image])

    for model_input in (_tensor_input(model_zoo, model, tensor, binary), _image_input([image], binary)):
        result = _infer(triton, model, model_input, binary)
        answer = result.get_response()
        assert (answer["model_name"], answer["model_version"]) == (model, version)
        probabilities = result.as_numpy("probabilities")
        assert probabilities.dtype == np.float32
        assert probabilities.shape == (1, len(CLASS_NAMES))
        np.testing.assert_allclose(probabilities[0], expected, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_batch_of_three_answers_one_row_per_image_in_order(
    triton: Any, model_zoo: Any, v1_probabilities: Any, sample_images: dict[str, bytes], binary: bool
) -> None:
    images = [sample_images[name] for name in ("notumor", "pituitary", "meningioma")]
    expected = np.stack([v1_probabilities("cnn", image)[0] for image in images])
    tensor = _tensor(model_zoo, "cnn", images)

    for model_input in (_tensor_input(model_zoo, "cnn", tensor, binary), _image_input(images, binary)):
        probabilities = _infer(triton, "cnn", model_input, binary).as_numpy("probabilities")
        assert probabilities.shape == (3, len(CLASS_NAMES))
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_a_version_or_alias_in_the_path_chooses_the_version(
    triton: Any, model_zoo: Any, v1_probabilities: Any, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["pituitary"]
    expected, _ = v1_probabilities("cnn", image, version="1")
    result = _infer(triton, "cnn", _image_input([image], True), True, version="1")
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("probabilities")[0], expected, atol=1e-5)
    assert triton.is_model_ready("cnn", "1")  # loaded by that request
    assert triton.get_model_metadata("rf", "champion")["name"] == "rf"
    assert _infer(triton, "rf", _image_input([image], True), True, "latest").get_response()["model_version"] == "2"


def test_errors_reach_tritonclient_as_messages_it_can_print(
    triton: Any, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    image_input = _image_input([sample_images["glioma"]], True)
    with pytest.raises(InferenceServerException) as unknown:
        _infer(triton, "vgg16", image_input, True)
    assert unknown.value.status() == "404"
    assert "Unknown model 'vgg16'" in str(unknown.value)
    assert "cnn" in unknown.value.message()  # names the models that exist

    with pytest.raises(InferenceServerException) as no_version:
        triton.get_model_metadata("cnn", "9")
    assert no_version.value.status() == "404"
    assert "Available versions: 2, 1" in str(no_version.value)
    assert not triton.is_model_ready("vgg16")

    wrong = np.zeros((1, 16, 16, 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as shape:
        _infer(triton, "cnn", _tensor_input(model_zoo, "cnn", wrong, True), True)
    assert shape.value.status() == "400"
    assert "[-1, 32, 32, 1]" in str(shape.value) and "[1, 16, 16, 1]" in str(shape.value)

    with pytest.raises(InferenceServerException) as not_an_image:
        _infer(triton, "cnn", _image_input([b"not an image"], True), True)
    assert not_an_image.value.status() == "400"
    assert "element 0" in str(not_an_image.value)


def test_without_requested_outputs_the_answer_is_binary_as_tritonclient_asks(
    triton: Any, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["meningioma"]
    result = triton.infer("snn", [_image_input([image], False)])  # sets parameters.binary_data_output
    output = result.get_output("probabilities")
    assert "data" not in output
    assert output["parameters"]["binary_data_size"] == 4 * len(CLASS_NAMES)
    assert output["parameters"]["class_names"] == ",".join(CLASS_NAMES)
    assert result.as_numpy("probabilities").sum() == pytest.approx(1.0, abs=1e-5)


# -- raw HTTP, in process --------------------------------------------------------------------------


def _binary_request(header: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + binary, {"inference-header-content-length": str(len(text))}


def test_errors_on_v2_have_the_protocol_body_and_v1_keeps_its_own(inference_client: Any) -> None:
    message = _protocol_error(inference_client.get("/v2/models/vgg16"), 404)
    assert message.startswith("Unknown model 'vgg16'")
    assert "Not Found" in _protocol_error(inference_client.get("/v2/nothing-here"), 404)
    assert "pattern" in _protocol_error(inference_client.get("/v2/models/bad%20name"), 400)
    assert "not an inference request" in _protocol_error(
        inference_client.post("/v2/models/cnn/infer", content=b"{not json"), 400
    )
    assert "inputs" in _protocol_error(inference_client.post("/v2/models/cnn/infer", json={"inputs": []}), 400)
    assert _protocol_error(inference_client.delete("/v2/models/cnn"), 405)
    v1 = inference_client.get("/v1/models/vgg16/contract").json()
    assert v1["error"]["code"] == "MODEL_NOT_FOUND"


def test_infer_refuses_inputs_and_outputs_the_model_does_not_have(
    inference_client: Any, sample_images: dict[str, bytes]
) -> None:
    data = base64.b64encode(sample_images["glioma"]).decode()
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}

    def post(body: dict[str, Any]) -> str:
        return _protocol_error(inference_client.post("/v2/models/cnn/infer", json=body), 400)

    assert "no input 'pixels'" in post({"inputs": [{**image, "name": "pixels"}]})
    assert "Send one input" in post({"inputs": [image, image]})
    assert "takes image files as BYTES, got FP32" in post({"inputs": [{**image, "datatype": "FP32"}]})
    assert "says 2 files, got 1" in post({"inputs": [{**image, "shape": [2]}]})
    assert "not valid base64" in post({"inputs": [{**image, "data": ["%%%"]}]})
    assert "Unknown output 'labels'" in post({"inputs": [image], "outputs": [{"name": "labels"}]})
    assert "classification extension" in post(
        {"inputs": [image], "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    )
    tensor = {"name": "input", "shape": [1, 32, 32, 1], "datatype": "FP32", "data": [0.5] * 1000}
    assert "needs 1024 values, got 1000" in post({"inputs": [tensor]})
    assert "numbers only" in post({"inputs": [{**tensor, "data": [[0.5, "x"]]}]})


def test_binary_sizes_must_add_up_to_the_body(inference_client: Any) -> None:
    tensor = np.full((1, 32, 32, 1), 0.5, dtype=np.float32).tobytes()
    spec = {"name": "input", "shape": [1, 32, 32, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4096}}
    body, headers = _binary_request({"inputs": [spec]}, tensor[:-4])
    assert "add up to 4096 bytes, but 4092" in _protocol_error(
        inference_client.post("/v2/models/cnn/infer", content=body, headers=headers), 400
    )
    body, headers = _binary_request({"inputs": [spec]}, tensor)
    response = inference_client.post("/v2/models/cnn/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"  # no binary output asked for
    assert response.json()["outputs"][0]["shape"] == [1, len(CLASS_NAMES)]

    no_data = {"name": "image", "shape": [1], "datatype": "BYTES"}
    assert "either in 'data' or as binary data" in _protocol_error(
        inference_client.post("/v2/models/cnn/infer", json={"inputs": [no_data]}), 400
    )
    garbled = struct.pack("<I", 99) + b"short"
    spec_bytes = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(garbled)}}
    body, headers = _binary_request({"inputs": [spec_bytes]}, garbled)
    assert "declares 99 bytes, only 5 follow" in _protocol_error(
        inference_client.post("/v2/models/cnn/infer", content=body, headers=headers), 400
    )


def _runs_of(model: str, version: str) -> tuple[float, float]:
    """(runs, images) recorded for a model version in the process's batch-size series."""
    from prometheus_client import REGISTRY

    labels = {"model": model, "version": version}
    count = REGISTRY.get_sample_value("bt_inference_batch_size_count", labels) or 0.0
    return count, REGISTRY.get_sample_value("bt_inference_batch_size_sum", labels) or 0.0


def test_a_batch_of_files_is_one_recorded_run(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    files = [base64.b64encode(sample_images[name]).decode() for name in ("glioma", "notumor", "pituitary")]
    runs, images = _runs_of("mobilenetv2", "1")
    image = {"name": "image", "shape": [3], "datatype": "BYTES", "data": files}
    response = inference_client.post("/v2/models/mobilenetv2/infer", json={"inputs": [image]})
    assert response.status_code == 200, response.text
    assert _runs_of("mobilenetv2", "1") == (runs + 1, images + 3)


def test_infer_bodies_are_bounded_by_the_tensor_limit(inference_app_client: Any, model_zoo: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_pixel_batch_bytes=5_000)
    tensor = {"name": "input", "shape": [1, 32, 32, 1], "datatype": "FP32", "data": [0.123456] * 1024}
    response = client.post("/v2/models/cnn/infer", json={"inputs": [tensor]})
    assert "at most 5000 bytes" in _protocol_error(response, 413)
    tensor["data"] = [0.5] * 1024  # about 4.2 kB of JSON: within the limit
    assert client.post("/v2/models/cnn/infer", json={"inputs": [tensor]}).status_code == 200


def test_model_ready_is_503_until_the_version_is_loaded(inference_client: Any, sample_images: dict[str, bytes]) -> None:
    # This app does not preload: the server is ready (nothing to wait for), the model not yet.
    assert inference_client.get("/v2/health/ready").json() == {"ready": True}
    assert inference_client.get("/v2/health/live").json() == {"live": True}
    assert "not loaded yet" in _protocol_error(inference_client.get("/v2/models/snn/ready"), 503)
    _protocol_error(inference_client.get("/v2/models/snn/versions/7/ready"), 404)

    data = base64.b64encode(sample_images["glioma"]).decode()
    image = {"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [[data]]}
    answer = inference_client.post("/v2/models/snn/infer", json={"id": "r-1", "inputs": [image]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "r-1"
    assert inference_client.get("/v2/models/snn/ready").json() == {"name": "snn", "ready": True}
    assert inference_client.get("/v2/models/snn/versions/best/ready").json() == {"name": "snn", "ready": True}


def test_a_loaded_version_stays_ready_when_the_catalogue_time_to_live_has_lapsed(
    inference_app_client: Any, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    # With a catalogue that is always older than its time to live, readiness must still see the loaded version
    # (it once answered 503 "not loaded yet" whenever a refresh was due: a flaky test under load).
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, catalog_ttl_s=0.001)
    assert client.post("/v1/models/snn/predict", files={"file": ("s.jpg", sample_images["glioma"])}).status_code == 200
    time.sleep(0.01)
    assert client.get("/v2/models/snn/ready").json() == {"name": "snn", "ready": True}


def test_registry_down_is_503_with_the_protocol_body(inference_app_client: Any, unused_url: str) -> None:
    client = inference_app_client(tracking_uri=unused_url)
    _protocol_error(client.get("/v2/health/ready"), 503)
    _protocol_error(client.get("/v2/models/cnn"), 503)
    assert client.get("/v2/health/live").status_code == 200


def test_openapi_declares_every_v2_status_with_the_protocol_error_body(inference_client: Any) -> None:
    paths = inference_client.get("/openapi.json").json()["paths"]
    declared = {
        (path, method): sorted(status for status in operation["responses"] if status[0] in "45")
        for path, operations in paths.items()
        if path.startswith("/v2")
        for method, operation in operations.items()
    }
    model_errors = ["400", "404", "408", "500", "503"]
    # 422: NOT_A_BRAIN_MRI (the OOD guard); 401 only with caller tokens (test_oip_audit.py)
    infer_errors = ["400", "404", "408", "413", "422", "500", "503"]
    assert declared == {
        # On every route: 400 INVALID_HOST (shared/kit/hosts.py; unsafe URL text too, the protocol's 400) and 408
        # REQUEST_TIMEOUT (shared/kit/request_checks.py), besides a route's own reasons.
        ("/v2/health/live", "get"): ["400", "408"],
        ("/v2/health/ready", "get"): ["400", "408", "503"],
        ("/v2", "get"): ["400", "408"],
        ("/v2/models/{model}", "get"): model_errors,
        ("/v2/models/{model}/versions/{version}", "get"): model_errors,
        ("/v2/models/{model}/ready", "get"): ["400", "404", "408", "503"],
        ("/v2/models/{model}/versions/{version}/ready", "get"): ["400", "404", "408", "503"],
        ("/v2/models/{model}/infer", "post"): infer_errors,
        ("/v2/models/{model}/versions/{version}/infer", "post"): infer_errors,
    }
    for (path, method), statuses in declared.items():
        for status in [*statuses, "default"]:
            schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/OipErrorOut"}, (path, method, status)
    request_body = paths["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]
    assert set(request_body) == {"application/json", "application/octet-stream"}
    assert "inputs" in request_body["application/json"]["schema"]["properties"]


def test_the_guards_parameters_name_a_declared_modality_per_element_only_when_one_is_declared() -> None:
    from services.inference.routes.oip import ood_parameters
    from shared.kit.schemas import OodOut

    def verdict(modality: str | None) -> OodOut:
        return OodOut(score=0.1, threshold=1.0, flag=modality is not None, flag_threshold=0.5,
                      unusual=modality is not None, declared_modality=modality, guard_version="1")  # fmt: skip

    parameters = ood_parameters([verdict(None), verdict("CT")])
    assert parameters is not None and parameters["ood_declared_modality"] == ",CT"
    assert parameters["ood_flag"] == "false,true"
    plain = ood_parameters([verdict(None), verdict(None)])
    assert plain is not None and "ood_declared_modality" not in plain
