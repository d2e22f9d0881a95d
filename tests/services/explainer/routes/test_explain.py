"""POST /v1/explain on the explainer, in process, in front of the real inference process serving the zoo."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.core.contract import CLASS_NAMES
from shared.core.explanation.occlusion import sliding_patches
from shared.core.explanation.regions import slic_regions
from shared.core.imaging import decode_grayscale, resize_gray
from shared.kit.schemas import ExplanationOut
from tests.error_body import error_body

FAST = {"num_samples": "60"}


def _explain(client: Any, data: bytes, **params: str) -> Any:
    return client.post("/v1/explain", params=params, files={"file": ("Jane_Doe.jpg", data, "image/jpeg")})


def _overlay(answer: ExplanationOut) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(answer.overlay_png)))
    image.load()
    assert image.format == "PNG"
    return image


def _predicted(inference_server: Any, model: str, image: bytes) -> dict[str, Any]:
    import httpx

    return httpx.post(
        f"{inference_server.url}/v1/models/{model}/predict", files={"file": ("a.jpg", image)}, timeout=30
    ).json()


def _check_regions(answer: ExplanationOut, count: int = 5) -> None:
    """Supporting regions positive and strongest first, opposing ones negative and most negative first."""
    assert len(answer.regions) <= count and len(answer.opposing_regions) <= count
    assert all(r.weight > 0 for r in answer.regions) and all(r.weight < 0 for r in answer.opposing_regions)
    assert [r.weight for r in answer.regions] == sorted((r.weight for r in answer.regions), reverse=True)
    assert [r.weight for r in answer.opposing_regions] == sorted(r.weight for r in answer.opposing_regions)
    segments = [r.segment for r in answer.regions + answer.opposing_regions]
    assert len(set(segments)) == len(segments) and all(1 <= s <= answer.num_segments for s in segments)


@pytest.mark.parametrize("model", ["rf", "snn", "cnn", "mobilenetv2"])
def test_every_family_is_explained_by_occlusion_through_the_served_session(
    explainer_client: Any, inference_server: Any, model_zoo: Any, sample_images: dict[str, bytes], model: str
) -> None:
    image = sample_images["meningioma"]
    response = _explain(explainer_client, image, model=model)
    assert response.status_code == 200, response.text
    answer = ExplanationOut.model_validate(response.json())
    assert set(response.json()) == set(ExplanationOut.model_fields)
    assert (answer.model, answer.version) == (model, model_zoo.default_version(model))
    assert (answer.method, answer.fill, answer.seed, answer.fit_r2, answer.intercept) == (
        "occlusion",
        "grey",
        None,
        None,
        None,
    )
    # The upload's own answer is exactly what /predict says.
    predicted = _predicted(inference_server, model, image)
    assert answer.predicted_label == predicted["label"] == answer.label
    for name in CLASS_NAMES:
        assert answer.probabilities[name] == pytest.approx(predicted["probabilities"][name], abs=1e-6)
    # Tiles of a quarter cell, drawn at the model's size; one copy per position of the patch, and the image.
    size = model_zoo.version(model, answer.version).contract.image_size
    patches = sliding_patches(resize_gray(decode_grayscale(image), size))
    assert answer.num_segments == patches.labels.max() and answer.num_samples == len(patches.hidden) + 1
    assert answer.regions or answer.opposing_regions
    _check_regions(answer)
    assert set(answer.timings_ms) == {"regions", "predict", "fit", "render"}
    assert answer.latency_ms >= answer.timings_ms["predict"]
    # The overlay is the scan (128 x 128 here) as a PNG, whatever the model's own input size.
    overlay = _overlay(answer)
    assert overlay.size == Image.open(io.BytesIO(image)).size == (answer.overlay_width, answer.overlay_height)


@pytest.mark.parametrize("model", ["snn", "mobilenetv2"])
def test_lime_answers_with_its_fit(
    explainer_client: Any, inference_server: Any, sample_images: dict[str, bytes], model: str
) -> None:
    image = sample_images["glioma"]
    response = _explain(explainer_client, image, model=model, method="lime", num_samples="80", seed="5")
    assert response.status_code == 200, response.text
    answer = ExplanationOut.model_validate(response.json())
    assert (answer.method, answer.fill, answer.seed, answer.num_samples) == ("lime", "grey", 5, 80)
    assert answer.fit_r2 is not None and answer.intercept is not None and answer.local_prediction is not None
    predicted = _predicted(inference_server, model, image)
    for name in CLASS_NAMES:
        assert answer.probabilities[name] == pytest.approx(predicted["probabilities"][name], abs=1e-6)
    _check_regions(answer)
    assert set(answer.timings_ms) == {"regions", "predict", "fit", "render"}


@pytest.mark.parametrize(("method", "draw"), [("occlusion", "grid"), ("lime", "slic")])
def test_the_background_is_never_a_region(
    explainer_client: Any, sample_images: dict[str, bytes], method: str, draw: str
) -> None:
    """The regions are those of the head's label map, drawn on the slice at the model's size (32 px for rf)."""
    image = sample_images["pituitary"]
    pixels = resize_gray(decode_grayscale(image), 32)
    labels = sliding_patches(pixels).labels if draw == "grid" else slic_regions(pixels, 48)
    answer = ExplanationOut.model_validate(
        _explain(explainer_client, image, model="rf", method=method, num_regions="50", **FAST).json()
    )
    assert answer.num_segments == labels.max()
    reported = answer.regions + answer.opposing_regions
    assert reported
    for region in reported:
        assert region.area_fraction == pytest.approx((labels == region.segment).mean(), abs=1e-4)
    head = labels > 0
    assert not head.all() and sum(r.area_fraction for r in reported) <= head.mean() + 1e-3


def test_same_seed_same_answer(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["glioma"]
    lime = {"method": "lime", **FAST}
    first = _explain(explainer_client, image, model="snn", seed="11", **lime).json()
    again = _explain(explainer_client, image, model="snn", seed="11", **lime).json()
    other = _explain(explainer_client, image, model="snn", seed="12", **lime).json()
    for key in ("regions", "opposing_regions", "overlay_png", "fit_r2", "intercept", "local_prediction"):
        assert first[key] == again[key], key
    assert first["regions"] != other["regions"]
    assert first["seed"] == 11 and other["seed"] == 12
    assert first["probabilities"] == other["probabilities"]


def test_occlusion_has_no_seed_and_gives_one_answer(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["meningioma"]
    first = _explain(explainer_client, image, model="rf").json()
    seeded = _explain(explainer_client, image, model="rf", seed="9", num_samples="77").json()
    assert first["seed"] is None and seeded["seed"] is None
    # One copy per position of the patch and the image itself (rf sees 32 px), whatever was asked of LIME.
    positions = len(sliding_patches(resize_gray(decode_grayscale(image), 32)).hidden)
    assert seeded["num_samples"] == first["num_samples"] == positions + 1
    for key in ("regions", "opposing_regions", "overlay_png", "probabilities"):
        assert first[key] == seeded[key], key


@pytest.mark.parametrize("fill", ["blur", "grey", "black"])
def test_the_fill_is_the_callers(explainer_client: Any, sample_images: dict[str, bytes], fill: str) -> None:
    answer = _explain(explainer_client, sample_images["glioma"], model="rf", fill=fill).json()
    assert answer["fill"] == fill


def test_different_fills_give_different_weights(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    blur = _explain(explainer_client, sample_images["glioma"], model="snn", fill="blur").json()
    black = _explain(explainer_client, sample_images["glioma"], model="snn", fill="black").json()
    assert blur["probabilities"] == black["probabilities"]
    assert blur["regions"] + blur["opposing_regions"] != black["regions"] + black["opposing_regions"]


def test_method_and_fill_defaults_come_from_the_settings(
    explainer_app_client: Any, sample_images: dict[str, bytes]
) -> None:
    client = explainer_app_client(
        default_method="lime", default_fill="grey", default_num_samples=60, occlusion_cells=4, occlusion_shifts=1
    )
    answer = _explain(client, sample_images["glioma"], model="rf").json()
    assert (answer["method"], answer["fill"], answer["num_samples"], answer["seed"]) == ("lime", "grey", 60, 0)
    occluded = _explain(client, sample_images["glioma"], model="rf", method="occlusion").json()
    assert occluded["num_segments"] <= 16 and occluded["fill"] == "grey"


def test_copies_are_sent_in_chunks_with_the_same_answer(
    explainer_app_client: Any, explainer_client: Any, sample_images: dict[str, bytes]
) -> None:
    chunked = explainer_app_client(max_copies_per_request=7)
    for params in ({"method": "lime", **FAST}, {"method": "occlusion"}):
        whole = _explain(explainer_client, sample_images["notumor"], model="cnn", **params).json()
        parts = _explain(chunked, sample_images["notumor"], model="cnn", **params).json()
        for key in ("regions", "opposing_regions", "probabilities", "fit_r2", "num_samples"):
            assert whole[key] == parts[key], (params, key)


def test_label_chooses_the_class_explained(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    image = sample_images["pituitary"]
    default = ExplanationOut.model_validate(_explain(explainer_client, image, model="snn").json())
    other_class = next(name for name in CLASS_NAMES if name != default.predicted_label)
    chosen = ExplanationOut.model_validate(_explain(explainer_client, image, model="snn", label=other_class).json())
    assert chosen.label == other_class
    assert chosen.predicted_label == default.predicted_label == default.label
    assert chosen.probabilities == default.probabilities
    assert chosen.regions + chosen.opposing_regions != default.regions + default.opposing_regions


def test_unknown_label_is_422_listing_the_classes(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    error = error_body(
        _explain(explainer_client, sample_images["glioma"], model="rf", label="tumour"), 422, "INVALID_REQUEST"
    )
    assert "notumor, pituitary, meningioma, glioma" in error["message"]


def test_default_number_of_samples_and_regions(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    answer = _explain(explainer_client, sample_images["notumor"], model="snn", method="lime", num_regions="3").json()
    assert answer["num_samples"] == 500
    assert len(answer["regions"]) <= 3 and len(answer["opposing_regions"]) <= 3
    assert len(answer["regions"]) + len(answer["opposing_regions"]) >= 3


@pytest.mark.parametrize("num_samples", ["49", "3001", "0", "-5"])
def test_num_samples_out_of_bounds_is_422(
    explainer_client: Any, sample_images: dict[str, bytes], num_samples: str
) -> None:
    response = _explain(explainer_client, sample_images["glioma"], model="rf", num_samples=num_samples)
    error = error_body(response, 422, "INVALID_REQUEST")
    assert "between 50 and 3000" in error["message"]


def test_num_samples_bounds_come_from_the_settings(explainer_app_client: Any, sample_images: dict[str, bytes]) -> None:
    client = explainer_app_client(min_num_samples=20, default_num_samples=30, max_num_samples=40)
    assert _explain(client, sample_images["glioma"], model="rf", method="lime").json()["num_samples"] == 30
    assert _explain(client, sample_images["glioma"], model="rf", method="lime", num_samples="20").status_code == 200
    error = error_body(_explain(client, sample_images["glioma"], model="rf", num_samples="41"), 422, "INVALID_REQUEST")
    assert "between 20 and 40" in error["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seed": "-1"}, "seed"),
        ({"num_regions": "0"}, "num_regions"),
        ({"num_samples": "many"}, "num_samples"),
        ({"method": "gradcam"}, "method"),
        ({"fill": "white"}, "fill"),
    ],
)
def test_malformed_parameters_are_422(
    explainer_client: Any, sample_images: dict[str, bytes], params: dict[str, str], field: str
) -> None:
    response = _explain(explainer_client, sample_images["glioma"], model="rf", **params)
    error = error_body(response, 422, "INVALID_REQUEST")
    assert field in error["message"]


def test_openapi_declares_method_fill_and_their_422(explainer_client: Any) -> None:
    operation = explainer_client.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]
    params = {param["name"]: param for param in operation["parameters"]}
    assert "occlusion" in params["method"]["description"] and "blur" in params["fill"]["description"]
    text = str(params["method"]["schema"]) + str(params["fill"]["schema"])
    assert all(word in text for word in ("occlusion", "lime", "blur", "grey", "black"))
    assert "unknown method or fill" in operation["responses"]["422"]["description"]
    assert "superpixels blacked out" not in operation["description"]


def test_non_image_is_415_without_echo(explainer_client: Any) -> None:
    response = _explain(explainer_client, b"Name: Jane Doe; MRN 0012345; not a picture", model="cnn")
    error_body(response, 415, "INVALID_IMAGE")
    assert "Jane" not in response.text and "0012345" not in response.text
    error_body(_explain(explainer_client, b"", model="cnn"), 415, "INVALID_IMAGE")


def test_oversize_upload_is_413(explainer_app_client: Any, sample_images: dict[str, bytes]) -> None:
    client = explainer_app_client(max_upload_bytes=1500)
    error = error_body(_explain(client, sample_images["glioma"], model="rf"), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": 1500}


def test_unknown_model_and_version_pass_through_as_404(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    error = error_body(_explain(explainer_client, sample_images["glioma"], model="vgg16"), 404, "MODEL_NOT_FOUND")
    assert "Available models: rf, snn, cnn, mobilenetv2." in error["message"]
    assert error["details"]["available_models"] == ["rf", "snn", "cnn", "mobilenetv2"]
    error = error_body(
        _explain(explainer_client, sample_images["glioma"], model="cnn", version="9"), 404, "VERSION_NOT_FOUND"
    )
    assert "Available versions: 2, 1." in error["message"]


def test_versions_and_aliases_are_resolved_once(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    assert (
        _explain(explainer_client, sample_images["glioma"], model="rf", version="champion", **FAST).json()["version"]
        == "1"
    )
    assert (
        _explain(explainer_client, sample_images["glioma"], model="cnn", version="1", **FAST).json()["version"] == "1"
    )


def test_non_square_scan_gets_an_overlay_of_its_own_size(
    explainer_client: Any, sample_images: dict[str, bytes]
) -> None:
    wide = Image.open(io.BytesIO(sample_images["glioma"])).convert("L").resize((200, 150))
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    answer = ExplanationOut.model_validate(_explain(explainer_client, buffer.getvalue(), model="snn", **FAST).json())
    assert _overlay(answer).size == (200, 150)
    for region in answer.regions + answer.opposing_regions:
        x0, y0, x1, y1 = region.bbox
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_inference_down_is_503(explainer_app_client: Any, unused_url: str, sample_images: dict[str, bytes]) -> None:
    client = explainer_app_client(inference_url=unused_url)
    error = error_body(_explain(client, sample_images["glioma"], model="cnn"), 503, "UPSTREAM_UNAVAILABLE")
    assert "inference service is unavailable" in error["message"]
    error_body(client.get("/readyz"), 503, "UPSTREAM_UNAVAILABLE")


def test_busy_explainer_is_503_after_the_queue_timeout(
    explainer_app_client: Any, sample_images: dict[str, bytes]
) -> None:
    client = explainer_app_client(queue_timeout_s=0.2)
    turns = client.app.state.turns
    client.portal.call(turns.acquire)  # the only slot is taken, as by a long explanation
    try:
        error = error_body(_explain(client, sample_images["glioma"], model="rf"), 503, "EXPLAINER_BUSY")
        assert "try again" in error["message"]
    finally:
        turns.release()
    assert _explain(client, sample_images["glioma"], model="rf", **FAST).status_code == 200


def test_the_request_id_reaches_the_error_body(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    response = explainer_client.post(
        "/v1/explain",
        params={"model": "vgg16"},
        files={"file": ("a.jpg", sample_images["glioma"], "image/jpeg")},
        headers={"x-request-id": "trace-42"},
    )
    assert response.json()["error"]["request_id"] == "trace-42"


def test_weights_change_with_the_image(explainer_client: Any, sample_images: dict[str, bytes]) -> None:
    one = _explain(explainer_client, sample_images["glioma"], model="snn").json()
    two = _explain(explainer_client, sample_images["notumor"], model="snn").json()
    assert one["overlay_png"] != two["overlay_png"]
    weights = [r["weight"] for answer in (one, two) for r in answer["regions"] + answer["opposing_regions"]]
    assert weights and np.isfinite(weights).all()


def test_unparsable_multipart_body_is_400(explainer_client: Any) -> None:
    # A multipart body without a boundary cannot be parsed at all.
    response = explainer_client.post(
        "/v1/explain", params={"model": "rf"}, content=b"file=a.jpg", headers={"content-type": "multipart/form-data"}
    )
    error_body(response, 400, "INVALID_REQUEST")
