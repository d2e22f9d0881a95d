"""The ensemble served by inference: a registered brain-tumor-ensemble version pinning three members of different
image sizes and scalings, answering the weighted mean of their probabilities (real MLflow, the real app)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.processes import free_port, start_mlflow, start_service
from shared.core.contract import PreprocessingContract
from tests.conftest import register_ensemble, register_onnx_model

# Three members as training would register them (versions 1), weights as fitted on a calibration slice.
WEIGHTS = {"rf": 0.5, "cnn": 0.3, "mobilenetv2": 0.2}
TEMPERATURE = 0.5  # an ensemble that sharpens its mean


def _registry(
    tmp_path_factory: pytest.TempPathFactory,
    make_onnx: Callable[..., tuple[bytes, Any]],
    temperature: float,
    left_out: str | None = None,
) -> tuple[Any, str]:
    """A dedicated MLflow (the shared zoo's listing stays four families) with three members and one ensemble."""
    from sklearn.ensemble import RandomForestClassifier

    from shared.core.ensemble_spec import EnsembleSpec

    state = tmp_path_factory.mktemp("ensemble-mlflow")
    server = start_mlflow(state / "store", free_port(), state / "mlflow.log")
    uri = server.url
    members = {
        "rf": make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=32))[0],
        "cnn": make_onnx(
            PreprocessingContract(layout="nhwc", scaling="unit", image_size=32),
            RandomForestClassifier(n_estimators=6, max_depth=5, random_state=2),
        )[0],
        "mobilenetv2": make_onnx(PreprocessingContract(layout="nhwc", scaling="raw", image_size=24))[0],
    }
    versions = {model: register_onnx_model(uri, model, onnx_bytes)[0] for model, onnx_bytes in members.items()}
    spec = EnsembleSpec(versions, WEIGHTS, temperature=temperature)
    if left_out:  # a member the fit left out (weight 0), pinned to a version that does not exist: never loaded
        spec = EnsembleSpec({**versions, left_out: "7"}, {**WEIGHTS, left_out: 0.0}, temperature=temperature)
    register_ensemble(uri, spec)
    return server, uri


@pytest.fixture(scope="module")
def ensemble_registry(
    tmp_path_factory: pytest.TempPathFactory, make_onnx: Callable[..., tuple[bytes, Any]]
) -> Iterator[str]:
    server, uri = _registry(tmp_path_factory, make_onnx, 1.0)
    yield uri
    server.stop()


@pytest.fixture(scope="module")
def tempered_registry(
    tmp_path_factory: pytest.TempPathFactory, make_onnx: Callable[..., tuple[bytes, Any]]
) -> Iterator[str]:
    """The same, its ensemble registered with a temperature of its own (training fits one on the slice), and the
    shallow net pinned at weight 0, as training's rule leaves out a member well below the best."""
    server, uri = _registry(tmp_path_factory, make_onnx, TEMPERATURE, left_out="snn")
    yield uri
    server.stop()


@pytest.fixture
def client(ensemble_registry: str, inference_app_client: Callable[..., Any], tmp_path: Path) -> Any:
    return inference_app_client(tracking_uri=ensemble_registry)


def _predict(client: Any, model: str, data: bytes, version: str | None = None) -> dict[str, Any]:
    params = {"version": version} if version else {}
    response = client.post(f"/v1/models/{model}/predict", params=params, files={"file": ("a.jpg", data)})
    assert response.status_code == 200, response.text
    return response.json()


def _weighted_mean(answers: dict[str, dict[str, Any]]) -> dict[str, float]:
    classes = next(iter(answers.values()))["probabilities"]
    return {c: sum(WEIGHTS[m] * answers[m]["probabilities"][c] for m in WEIGHTS) for c in classes}


def test_a_tempered_ensemble_answers_its_weighted_mean_tempered(
    tempered_registry: str, inference_app_client: Callable[..., Any], sample_images: dict
) -> None:
    from shared.core.temperature import apply_temperature

    client = inference_app_client(tracking_uri=tempered_registry)
    for data in list(sample_images.values())[:3]:
        mean = _weighted_mean({model: _predict(client, model, data) for model in WEIGHTS})
        expected = apply_temperature(np.array([list(mean.values())]), TEMPERATURE)[0]
        answer = _predict(client, "ensemble", data)
        np.testing.assert_allclose(list(answer["probabilities"].values()), expected, atol=1e-5)
        assert max(answer["probabilities"].values()) > max(mean.values())  # sharper than the plain mean


def test_a_member_weighing_0_is_neither_run_nor_listed(
    tempered_registry: str, inference_app_client: Callable[..., Any], sample_images: dict
) -> None:
    """The tempered registry pins the shallow net at weight 0 to a version that does not exist: loading it would
    fail the answer."""
    client = inference_app_client(tracking_uri=tempered_registry)
    answer = _predict(client, "ensemble", next(iter(sample_images.values())))
    assert answer["members"] == dict.fromkeys(WEIGHTS, "1")
    (version,) = next(m for m in client.get("/v1/models").json()["models"] if m["model"] == "ensemble")["versions"]
    assert version["members"] == dict.fromkeys(WEIGHTS, "1") and version["weights"] == pytest.approx(WEIGHTS)


def test_ensemble_answers_the_weighted_mean_of_its_pinned_members(client: Any, sample_images: dict) -> None:
    for data in sample_images.values():
        answer = _predict(client, "ensemble", data)
        assert answer["model"] == "ensemble" and answer["version"] == "1"
        assert answer["members"] == {"rf": "1", "cnn": "1", "mobilenetv2": "1"}
        members = {model: _predict(client, model, data, version="1") for model in WEIGHTS}
        expected = _weighted_mean(members)
        for name, probability in answer["probabilities"].items():
            assert probability == pytest.approx(expected[name], abs=1e-5)
        assert answer["label"] == max(expected, key=expected.get)
        assert all("members" not in item for item in members.values()), "a single model's answer keeps its shape"


def test_ensemble_in_a_comparison_and_in_the_listing(client: Any, sample_images: dict) -> None:
    data = sample_images["glioma"]
    alone = _predict(client, "ensemble", data)
    response = client.post(
        "/v1/compare", params=[("models", "ensemble"), ("models", "rf")], files={"file": ("a.jpg", data)}
    )
    assert response.status_code == 200, response.text
    item = next(item for item in response.json()["results"] if item["model"] == "ensemble")
    assert item["ok"] and item["result"]["members"] == alone["members"]
    for name, probability in item["result"]["probabilities"].items():
        assert probability == pytest.approx(alone["probabilities"][name], abs=1e-5)

    listing = {model["model"]: model for model in client.get("/v1/models").json()["models"]}
    (version,) = listing["ensemble"]["versions"]
    assert version["members"] == {"rf": "1", "cnn": "1", "mobilenetv2": "1"}
    assert version["weights"] == pytest.approx(WEIGHTS)
    assert "members" not in listing["rf"]["versions"][0]


def test_ensemble_takes_pixels_at_its_largest_member_size(client: Any) -> None:
    """The explainer's path: raw pixels at the contract size, resized for each member."""
    contract = client.get("/v1/models/ensemble/contract").json()["contract"]
    assert contract["image_size"] == 32 and contract["scaling"] == "raw"
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
    response = client.post(
        "/v1/models/ensemble/predict-pixels",
        content=pixels.tobytes(),
        headers={"x-pixels-shape": "3,32,32", "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    rows = np.array(response.json()["probabilities"])
    assert rows.shape == (3, 4) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-5)


# -- the spec is a registered file: checked on download and on every load, never served edited ---------------------

EDITED_WEIGHTS = {"rf": 0.9997, "cnn": 0.0002, "mobilenetv2": 0.0001}


def _edit_cached_spec(cache: Path) -> Path:
    """What the issue's probe did: weight the forest 0.9997 in the cached spec (its sha256 no longer matches)."""
    (path,) = cache.glob("brain-tumor-ensemble/v1-*/ensemble.json")
    document = json.loads(path.read_text())
    document["weights"] = EDITED_WEIGHTS
    path.write_text(json.dumps(document))
    return path


def test_an_edited_ensemble_spec_is_never_served(
    ensemble_registry: str, tcp_proxy: Callable[[str], Any], tmp_path: Path, service_logs: Path,
    sample_images: dict[str, bytes],
) -> None:  # fmt: skip
    from services.inference.model_store import CATALOG_FILENAME, file_sha256

    proxy = tcp_proxy(ensemble_registry)  # closing it makes MLflow look down at the same address
    cache = tmp_path / "cache"
    env = {
        "BT_INFERENCE_TRACKING_URI": proxy.url,
        "MLFLOW_TRACKING_URI": proxy.url,
        "BT_INFERENCE_CACHE_DIR": str(cache),
    }
    image = sample_images["meningioma"]

    def serve(run: Callable[[str], None], log: str) -> None:
        """Run ``run(url)`` against a fresh inference process on the cache folder (a restart each time)."""
        process = start_service("inference", free_port(), env, service_logs / f"inference-{log}.log")
        try:
            run(process.url)
        finally:
            process.stop()

    def predict(url: str, model: str = "ensemble") -> httpx.Response:
        files = {"file": ("a.jpg", image, "image/jpeg")}
        return httpx.post(f"{url}/v1/models/{model}/predict", files=files, timeout=60.0, trust_env=False)

    answers: list[dict[str, Any]] = []
    serve(lambda url: answers.append(predict(url).json()), "spec-first")
    registered = answers[0]["probabilities"]

    # MLflow up: the edited file fails its sha256, is deleted and fetched again; the answer is the registered one.
    spec_path = _edit_cached_spec(cache)

    def refetched(url: str) -> None:
        response = predict(url)
        assert response.status_code == 200, response.text
        assert response.json()["probabilities"] == pytest.approx(registered, abs=1e-6)
        assert json.loads(spec_path.read_text())["weights"] == pytest.approx(WEIGHTS)

    serve(refetched, "spec-refetched")

    # MLflow down: the edited file cannot be fetched again, so the ensemble is unavailable (a clear 503), while
    # models whose files still verify are served from the kept catalogue.
    _edit_cached_spec(cache)
    proxy.close()

    def unavailable(url: str) -> None:
        response = predict(url)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "REGISTRY_UNAVAILABLE" and response.headers["retry-after"]
        assert not spec_path.exists()  # deleted, never opened
        assert predict(url, "rf").status_code == 200

    serve(unavailable, "spec-mlflow-down")

    # The attacker's next move: edit the spec and the catalogue's expected sha256 to match. The catalogue's
    # signature (a key outside the cache folder) no longer matches: it is ignored, and nothing is served from it.
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    document = {"members": {"rf": "1", "cnn": "1", "mobilenetv2": "1"}, "weights": EDITED_WEIGHTS, "conformal": None}
    spec_path.write_text(json.dumps(document))
    catalog_path = cache / CATALOG_FILENAME
    catalog = json.loads(catalog_path.read_text())
    for version in catalog["models"]["ensemble"]["versions"]:
        version["onnx_sha256"] = file_sha256(spec_path)
    catalog_path.write_text(json.dumps(catalog))

    def not_trusted(url: str) -> None:
        for model in ("ensemble", "rf"):
            response = predict(url, model)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "REGISTRY_UNAVAILABLE"

    serve(not_trusted, "catalog-edited")
