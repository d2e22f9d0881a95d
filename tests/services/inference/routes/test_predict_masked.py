"""POST /v1/models/{model}/predict-masked: copies of one upload with regions hidden, answered by the real inference
service (a uvicorn process on the test zoo, and one on a registry with an ensemble) with real onnxruntime sessions.

The reference for a masked copy is the registered estimator itself on ``RegionMasks.applied`` of the upload decoded
at the model's own size, so the masks are checked to be applied after each model's resize, as the issue asks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.processes import ManagedProcess, free_port, start_service
from shared.core.contract import CLASS_NAMES, PreprocessingContract
from shared.core.imaging import decode_to_array, to_model_input
from shared.core.masking import MAX_REGIONS, RegionMasks, keep_bytes, labels_png
from shared.kit.schemas import MaskedPredictionOut
from tests.error_body import error_body
from tests.services.inference import test_ensemble

# The ensemble's own MLflow (three members of two image sizes and one ensemble), as test_ensemble.py registers it.
ensemble_registry = test_ensemble.ensemble_registry

PATH = "/v1/models/{model}/predict-masked"


def _grid(side: int = 64, cells: int = 4) -> np.ndarray:
    """A label map of cells x cells regions 1..R inside a border of 0, drawn at ``side`` px (any size will do)."""
    labels = np.zeros((side, side), dtype=np.int32)
    step = side // (cells + 2)
    for row in range(cells):
        for col in range(cells):
            top, left = (row + 1) * step, (col + 1) * step
            labels[top : top + step, left : left + step] = row * cells + col + 1
    return labels


LABELS = _grid()
REGIONS = int(LABELS.max())


def _rows() -> np.ndarray:
    """All kept; each of three regions hidden alone; all hidden; half hidden."""
    keep = np.ones((6, REGIONS), dtype=bool)
    for row, region in enumerate((0, 5, 10), start=1):
        keep[row, region] = False
    keep[4] = False
    keep[5, ::2] = False
    return keep


def _post(
    url: str,
    model: str,
    image: bytes,
    keep: np.ndarray | bytes,
    labels: np.ndarray | bytes = LABELS,
    **params: Any,
) -> httpx.Response:
    files = {
        "file": ("scan.jpg", image, "image/jpeg"),
        "regions": ("regions.png", labels if isinstance(labels, bytes) else labels_png(labels), "image/png"),
        "keep": ("keep.bin", keep if isinstance(keep, bytes) else keep_bytes(keep), "application/octet-stream"),
    }
    return httpx.post(f"{url}{PATH.format(model=model)}", params=params, files=files, timeout=120, trust_env=False)


def _probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    answer = MaskedPredictionOut.model_validate(response.json())
    assert answer.class_names == list(CLASS_NAMES)
    return np.array(answer.probabilities)


def _predicted(url: str, model: str, image: bytes, **params: Any) -> np.ndarray:
    response = httpx.post(
        f"{url}/v1/models/{model}/predict", params=params, files={"file": ("scan.jpg", image)}, timeout=60
    )
    assert response.status_code == 200, response.text
    return np.array([response.json()["probabilities"][name] for name in CLASS_NAMES])


def _estimator(zoo: Any, model: str, version: str, image: bytes, masks: RegionMasks) -> np.ndarray:
    """The registered estimator on the copies made at the model's own size from the upload."""
    trained = zoo.version(model, version)
    size = trained.contract.image_size
    copies = masks.applied(decode_to_array(image, size))
    flat = PreprocessingContract(layout="flat", scaling="unit", image_size=size)
    return np.asarray(trained.estimator.predict_proba(to_model_input(copies, flat)))


# -- one model --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["rf", "snn", "cnn", "mobilenetv2"])
def test_the_all_keep_row_is_predicts_answer_and_every_row_the_estimators(
    inference_server: ManagedProcess, model_zoo: Any, sample_images: dict[str, bytes], model: str
) -> None:
    image = sample_images["glioma"]
    keep = _rows()
    response = _post(inference_server.url, model, image, keep, fill="blur")
    got = _probabilities(response)
    answer = response.json()
    version = model_zoo.default_version(model)
    assert (answer["model"], answer["version"], answer["fill"]) == (model, version, "blur")
    assert got.shape == (len(keep), len(CLASS_NAMES)) and answer["latency_ms"] > 0
    np.testing.assert_allclose(got[0], _predicted(inference_server.url, model, image), atol=1e-6)
    expected = _estimator(model_zoo, model, version, image, RegionMasks(LABELS, keep, "blur"))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_hiding_regions_changes_the_answer_and_rows_keep_their_order(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["meningioma"]
    keep = _rows()
    got = _probabilities(_post(inference_server.url, "snn", image, keep, fill="black"))
    assert all(np.abs(got[row] - got[0]).max() > 1e-4 for row in range(1, len(keep)))
    reversed_rows = _probabilities(_post(inference_server.url, "snn", image, keep[::-1], fill="black"))
    np.testing.assert_allclose(reversed_rows, got[::-1], atol=1e-6)


def test_each_fill_hides_differently_and_the_all_keep_row_is_the_same_for_all(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["pituitary"]
    keep = np.array([[True] * REGIONS, [False] * REGIONS])
    answers = {
        fill: _probabilities(_post(inference_server.url, "cnn", image, keep, fill=fill))
        for fill in ("blur", "grey", "black")
    }
    kept = answers["blur"][0]
    for fill, rows in answers.items():
        np.testing.assert_allclose(rows[0], kept, atol=1e-6)
        assert np.abs(rows[1] - kept).max() > 1e-3, f"hiding the whole head with {fill} changed nothing"
    assert np.abs(answers["black"][1] - answers["blur"][1]).max() > 1e-4
    assert np.abs(answers["grey"][1] - answers["black"][1]).max() > 1e-4


def test_fill_defaults_to_blur_and_the_version_and_any_label_size_are_honoured(
    inference_server: ManagedProcess, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    image = sample_images["notumor"]
    keep = _rows()
    response = _post(inference_server.url, "cnn", image, keep, labels=_grid(side=300), version="1")
    got = _probabilities(response)
    assert (response.json()["version"], response.json()["fill"]) == ("1", "blur")
    expected = _estimator(model_zoo, "cnn", "1", image, RegionMasks(_grid(side=300), keep, "blur"))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_runs_of_copies_are_bounded_and_answered_in_order(
    inference_app_client: Any, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, pixel_run_batch=7)
    image = sample_images["glioma"]
    keep = np.random.default_rng(3).random((50, REGIONS)) < 0.6
    files = {"file": ("a.jpg", image), "regions": ("r.png", labels_png(LABELS)), "keep": ("k", keep_bytes(keep))}
    response = client.post(PATH.format(model="mobilenetv2"), params={"fill": "grey"}, files=files)
    got = np.array(response.json()["probabilities"])
    expected = _estimator(model_zoo, "mobilenetv2", "1", image, RegionMasks(LABELS, keep, "grey"))
    np.testing.assert_allclose(got, expected, atol=1e-5)


# -- the ensemble: each member masked at its own size ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble_server(
    ensemble_registry: str, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[str]:  # noqa: F811
    env = {
        "BT_INFERENCE_TRACKING_URI": ensemble_registry,
        "MLFLOW_TRACKING_URI": ensemble_registry,
        "BT_INFERENCE_CACHE_DIR": str(tmp_path_factory.mktemp("masked-ensemble-cache")),
    }
    server = start_service("inference", free_port(), env, service_logs / "inference-masked-ensemble.log")
    yield server.url
    server.stop()


def test_the_ensemble_masks_each_member_at_its_own_size(ensemble_server: str, sample_images: dict[str, bytes]) -> None:
    listing = httpx.get(f"{ensemble_server}/v1/models", timeout=60).json()["models"]
    (spec,) = next(model for model in listing if model["model"] == "ensemble")["versions"]
    weights, members = spec["weights"], spec["members"]
    sizes = {
        member: httpx.get(f"{ensemble_server}/v1/models/{member}/contract", params={"version": version}).json()
        for member, version in members.items()
    }
    assert {info["contract"]["image_size"] for info in sizes.values()} == {24, 32}  # two sizes among the members
    image = sample_images["meningioma"]
    keep = _rows()
    for fill in ("blur", "black"):
        got = _probabilities(_post(ensemble_server, "ensemble", image, keep, fill=fill))
        np.testing.assert_allclose(got[0], _predicted(ensemble_server, "ensemble", image), atol=1e-6)
        alone = {
            member: _probabilities(_post(ensemble_server, member, image, keep, fill=fill, version=version))
            for member, version in members.items()
        }
        expected = sum(weights[member] * rows for member, rows in alone.items())
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.abs(got[4] - got[0]).max() > 1e-4


def test_the_ensembles_copies_are_not_made_at_one_size(ensemble_server: str, sample_images: dict[str, bytes]) -> None:
    """A 24 px member given the masks resized from 32 px copies would answer otherwise than at its own 24 px."""
    from PIL import Image

    image = sample_images["glioma"]
    keep = _rows()
    masks = RegionMasks(LABELS, keep, "black")
    at_32 = masks.applied(decode_to_array(image, 32))
    resized = np.stack([np.asarray(Image.fromarray(copy).resize((24, 24), Image.BILINEAR)) for copy in at_32])
    at_24 = masks.applied(decode_to_array(image, 24))
    assert not np.array_equal(resized, at_24)  # the two ways differ for this upload; the service does the second
    got = _probabilities(_post(ensemble_server, "mobilenetv2", image, keep, fill="black", version="1"))
    pixels = httpx.post(
        f"{ensemble_server}/v1/models/mobilenetv2/predict-pixels",
        params={"version": "1"},
        content=at_24.tobytes(),
        headers={"x-pixels-shape": f"{len(at_24)},24,24", "content-type": "application/octet-stream"},
        timeout=60,
    )
    np.testing.assert_allclose(got, np.array(pixels.json()["probabilities"]), atol=1e-6)


# -- bad requests: declared 4xx with the stable error body, never a 500 ------------------------------------------------


def _error(response: httpx.Response, status: int, code: str, problem: str) -> dict[str, Any]:
    error = error_body(response, status, code)
    assert problem in error["message"], error["message"]
    return error


def test_keep_rows_that_do_not_fit_the_regions_are_422(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    url, image = inference_server.url, sample_images["glioma"]
    _error(
        _post(url, "rf", image, b"\x01" * (3 * REGIONS - 1)), 422, "INVALID_REQUEST", f"one byte per region ({REGIONS})"
    )
    two_rows = b"\x01" * REGIONS + b"\x02" + b"\x00" * (REGIONS - 1)
    _error(_post(url, "rf", image, two_rows), 422, "INVALID_REQUEST", "0 (hide) or 1 (keep)")
    _error(_post(url, "rf", image, b"1" * REGIONS), 422, "INVALID_REQUEST", "0 (hide) or 1 (keep)")
    _error(_post(url, "rf", image, b""), 422, "INVALID_REQUEST", "one byte per region")


def test_regions_that_are_not_a_grayscale_png_label_map_are_422(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    import io

    from PIL import Image

    url, image = inference_server.url, sample_images["glioma"]
    keep = np.ones((1, REGIONS), dtype=bool)
    rgb = io.BytesIO()
    Image.new("RGB", (16, 16)).save(rgb, format="PNG")
    for regions, problem in (
        (image, "grayscale PNG"),  # a JPEG
        (rgb.getvalue(), "grayscale PNG"),
        (b"\x89PNG\r\n\x1a\n broken", "not a readable PNG"),
        (labels_png(np.zeros((8, 8))), "one byte per region (0)"),  # no region to hide
        (labels_png(np.ones((1100, 4))), "at most 1024 px"),
    ):
        _error(_post(url, "rf", image, keep, labels=regions), 422, "INVALID_REQUEST", problem)
    big = np.zeros((8, 8), dtype=np.int32)
    big[0, 0] = MAX_REGIONS + 1
    too_many = _post(url, "rf", image, b"\x01" * (MAX_REGIONS + 1), labels=labels_png(big))
    _error(too_many, 422, "INVALID_REQUEST", "0..1024")


def test_more_copies_than_the_setting_are_422(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    url, image = inference_server.url, sample_images["glioma"]
    one_region = np.ones((8, 8), dtype=np.int32)
    error = _error(_post(url, "rf", image, b"\x01" * 4097, labels=one_region), 422, "INVALID_REQUEST", "at most 4096")
    assert error["details"] == {"max_copies": 4096}
    _error(_post(url, "rf", image, b"\x00" * 4097 * REGIONS), 422, "INVALID_REQUEST", "at most 4096")
    # More bytes than the most copies of the most regions are not even read whole.
    _error(_post(url, "rf", image, b"\x01" * (4096 * MAX_REGIONS + 1)), 422, "INVALID_REQUEST", "at most 4096")
    assert _probabilities(_post(url, "rf", image, b"\x01" * 4096, labels=one_region)).shape == (4096, 4)


def test_missing_parts_unknown_models_and_bad_parameters_are_declared_errors(
    inference_server: ManagedProcess, sample_images: dict[str, bytes]
) -> None:
    url, image = inference_server.url, sample_images["glioma"]
    keep = np.ones((2, REGIONS), dtype=bool)
    parts = {"file": ("a.jpg", image), "regions": ("r.png", labels_png(LABELS)), "keep": ("k", keep_bytes(keep))}
    for missing in parts:
        files = {name: part for name, part in parts.items() if name != missing}
        response = httpx.post(f"{url}{PATH.format(model='rf')}", files=files, timeout=60)
        _error(response, 422, "INVALID_REQUEST", missing)
    as_field = httpx.post(
        f"{url}{PATH.format(model='rf')}",
        files={"file": parts["file"], "regions": parts["regions"]},
        data={"keep": "\x01" * REGIONS},
        timeout=60,
    )
    _error(as_field, 422, "INVALID_REQUEST", "keep")
    _error(_post(url, "vgg16", image, keep), 404, "MODEL_NOT_FOUND", "Available models")
    _error(_post(url, "rf", image, keep, version="9"), 404, "VERSION_NOT_FOUND", "9")
    _error(_post(url, "rf", image, keep, fill="white"), 422, "INVALID_REQUEST", "fill")
    _error(_post(url, "rf", image, keep, frame=2), 422, "INVALID_REQUEST", "DICOM files only")
    _error(_post(url, "rf", b"not an image", keep), 415, "INVALID_IMAGE", "")
    _error(_post(url, "rf", b"", keep), 415, "INVALID_IMAGE", "empty")


def test_each_part_and_the_body_are_bounded(inference_app_client: Any, model_zoo: Any) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, max_upload_bytes=1024, max_masked_copies=2)
    keep = keep_bytes(np.ones((1, REGIONS), dtype=bool))
    regions = labels_png(LABELS)
    oversize = {"file": ("a.jpg", b"\0" * 2048), "regions": ("r.png", regions), "keep": ("k", keep)}
    error = error_body(client.post(PATH.format(model="rf"), files=oversize), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": 1024}
    huge_regions = {"file": ("a.jpg", b"\0"), "regions": ("r.png", b"\0" * (4 * 1024 * 1024 + 1)), "keep": ("k", keep)}
    error = error_body(client.post(PATH.format(model="rf"), files=huge_regions), 413, "FILE_TOO_LARGE")
    assert "regions" in error["message"]
    limit = client.app.state.settings.masked_body_bytes()
    assert limit == 1024 + 4 * 1024 * 1024 + 2 * MAX_REGIONS + 64 * 1024
    body = {"file": ("a.jpg", b"\0"), "regions": ("r.png", regions), "keep": ("k", b"\0" * (limit + 1))}
    error = error_body(client.post(PATH.format(model="rf"), files=body), 413, "FILE_TOO_LARGE")
    assert "request body is too large" in error["message"] and error["details"] == {"max_bytes": limit}


def test_openapi_declares_the_parts_and_the_statuses(inference_server: ManagedProcess) -> None:
    schema = httpx.get(f"{inference_server.url}/openapi.json", timeout=30).json()
    operation = schema["paths"][PATH]["post"]
    assert {"400", "404", "413", "415", "422", "500", "503"} <= set(operation["responses"])
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MaskedPredictionOut"
    }
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(form["required"]) == {"file", "regions", "keep"}
    params = {param["name"]: param for param in operation["parameters"]}
    assert {"version", "frame", "fill"} <= set(params)
    assert params["fill"]["schema"]["enum"] == ["blur", "grey", "black"]
