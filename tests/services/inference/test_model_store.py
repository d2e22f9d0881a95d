"""The verified local store against the session's real MLflow: cached files checked against the registry's
sha256 before every load, bad ones deleted and downloaded again, downloads that fail the check never cached,
versions without the tag trusted once and held to it, the last catalogue kept on disk; and the circuit breaker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference import model_store
from services.inference.cache_trust import CacheSigner
from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from services.inference.circuit import CircuitBreaker
from services.inference.listing import list_models
from services.inference.mlflow_records import ONNX_SHA256_TAG
from services.inference.mlflow_store import MlflowStore, configure_mlflow_http
from services.inference.model_store import cache_path
from services.inference.registry import open_registry
from shared.core.contract import CLASS_NAMES, ONNX_FILENAME, PreprocessingContract
from shared.kit.errors import ErrorCode, ServiceError
from tests.conftest import register_onnx_model


@pytest.fixture(scope="module", autouse=True)
def _bounded_mlflow_calls() -> None:
    configure_mlflow_http(timeout_s=5, max_retries=0)


def _catalogued(store: MlflowStore, model: str, version: str) -> tuple[ModelRecord, VersionRecord, Path]:
    record = store.fetch_catalog().models[model]
    version_record = record.versions[version]
    return record, version_record, store.download(record, version_record)


def test_the_catalogue_carries_the_sha256_tagged_at_registration(model_zoo: Any, tmp_path: Path) -> None:
    catalog = MlflowStore(model_zoo.tracking_uri, tmp_path).fetch_catalog()
    for record in catalog.models.values():
        assert all(len(v.onnx_sha256 or "") == 64 for v in record.versions.values()), record


@pytest.mark.parametrize("damage", ["truncated", "swapped"])
def test_a_damaged_cache_file_is_replaced_by_the_registered_one(model_zoo: Any, tmp_path: Path, damage: str) -> None:
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)
    record, version, path = _catalogued(store, "cnn", "1")
    good = path.read_bytes()
    assert model_store.file_sha256(path) == version.onnx_sha256
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:  # snn's file copied over cnn's: a valid model, the wrong one
        _, _, snn_path = _catalogued(store, "snn", "1")
        path.write_bytes(snn_path.read_bytes())

    again = store.download(record, version)

    assert again == path
    assert again.read_bytes() == good
    verified = json.loads((path.parent / model_store.VERIFIED_FILENAME).read_text())
    assert verified.pop(model_store.SIGNATURE_KEY)  # signed with a key the cache folder does not hold
    assert verified == {"folder": _folder(path), "sha256": version.onnx_sha256, "origin": model_store.FROM_REGISTRY}


def test_a_download_that_fails_its_check_is_never_cached(model_zoo: Any, make_onnx: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    onnx_bytes, _ = make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=16))
    name = "store-test-wrong-sha"  # outside the catalogue's prefix: the zoo's listing stays as it is
    number, _ = register_onnx_model(model_zoo.tracking_uri, "wrong", onnx_bytes, registered_as=name)
    client = MlflowClient(tracking_uri=model_zoo.tracking_uri, registry_uri=model_zoo.tracking_uri)
    client.set_model_version_tag(name, number, ONNX_SHA256_TAG, "0" * 64)  # as if the stored file had changed
    found = client.get_model_version(name, number)
    version = VersionRecord(number, found.run_id, found.source, None, found.tags[ONNX_SHA256_TAG])
    record = ModelRecord("wrong", name, {number: version}, {})
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)

    with pytest.raises(ServiceError) as caught:
        store.download(record, version)

    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert "does not match the sha256 recorded when it was registered" in caught.value.message
    assert not cache_path(store.cache_dir, record, version).exists()
    assert not list((tmp_path / name).iterdir())  # nor any staging folder


def test_a_version_without_the_tag_is_trusted_once_and_held_to_it(
    model_zoo: Any, make_onnx: Any, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    onnx_bytes, _ = make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=16))
    other_bytes, _ = make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=24))
    name = "store-test-untagged"
    number, _ = register_onnx_model(model_zoo.tracking_uri, "old", onnx_bytes, layout="bare-onnx", registered_as=name)
    found = MlflowClient(tracking_uri=model_zoo.tracking_uri, registry_uri=model_zoo.tracking_uri).get_model_version(
        name, number
    )
    assert ONNX_SHA256_TAG not in found.tags  # the older layout: registered before training tagged versions
    version = VersionRecord(number, found.run_id, found.source, None)
    record = ModelRecord("old", name, {number: version}, {})
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)

    path = store.download(record, version)
    verified = json.loads((path.parent / model_store.VERIFIED_FILENAME).read_text())
    assert verified.pop(model_store.SIGNATURE_KEY)
    expected = {
        "folder": _folder(path),
        "sha256": model_store.file_sha256(path),
        "origin": model_store.TRUSTED_ON_DOWNLOAD,
    }
    assert verified == expected
    path.write_bytes(other_bytes)  # a later swap is caught by the recorded sha256

    assert store.download(record, version).read_bytes() == onnx_bytes


def test_a_restart_while_mlflow_is_down_serves_the_kept_catalogue_and_files(
    model_zoo: Any, tmp_path: Path, tcp_proxy: Any, sample_images: dict[str, bytes]
) -> None:
    proxy = tcp_proxy(model_zoo.tracking_uri)  # closing it makes MLflow look down at the same address
    online = open_registry(proxy.url, tmp_path)
    online.preload_defaults()
    assert online.readiness() == "reachable"
    assert (tmp_path / model_store.CATALOG_FILENAME).is_file()
    proxy.close()

    offline = open_registry(proxy.url, tmp_path, registry_retry_s=60)  # a restart: same cache folder
    for name in model_zoo.versions:
        classifier = offline.get(name)
        assert classifier.version == model_zoo.default_version(name)
        trained = model_zoo.version(name, classifier.version)
        result = classifier.classify(sample_images["glioma"])
        got = np.array([result.probabilities[label] for label in CLASS_NAMES])
        np.testing.assert_allclose(got, trained.expected_probabilities(sample_images["glioma"]), atol=1e-5)
    assert offline.readiness().startswith("unreachable since ")
    assert [info.model for info in list_models(offline).models] == ["rf", "snn", "cnn", "mobilenetv2"]
    # A version never downloaded cannot be served: a clear 503, at once (the breaker is open).
    with pytest.raises(ServiceError) as caught:
        offline.get("rf", "2")
    assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE
    assert "unreachable since" in caught.value.message


def test_a_default_model_that_cannot_be_loaded_makes_the_registry_not_ready(
    model_zoo: Any, tmp_path: Path, tcp_proxy: Any
) -> None:
    proxy = tcp_proxy(model_zoo.tracking_uri)
    online = open_registry(proxy.url, tmp_path)
    online.preload_defaults()
    cnn = next((tmp_path / "brain-tumor-cnn").glob(f"v{model_zoo.default_version('cnn')}-*/{ONNX_FILENAME}"))
    cnn.write_bytes(cnn.read_bytes()[:100])  # truncated
    proxy.close()

    offline = open_registry(proxy.url, tmp_path)
    with pytest.raises(ServiceError) as caught:
        offline.readiness()
    assert caught.value.code is ErrorCode.MODEL_NOT_READY
    assert caught.value.details == {"models": ["cnn"]}
    assert not cnn.exists()  # the bad file is gone, never opened


def test_a_saved_catalogue_reads_back_the_same() -> None:
    version = VersionRecord("3", "run", "models:/m-1", "2026-01-01T00:00:00+00:00", "ab" * 32)
    catalog = Catalog({"cnn": ModelRecord("cnn", "brain-tumor-cnn", {"3": version}, {"champion": "3"})})
    again = Catalog.from_json(json.loads(json.dumps(catalog.to_json())))
    assert again.models == catalog.models
    assert again.from_disk and again.age_s() == float("inf")


def _folder(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}"


def test_an_unreadable_foreign_edited_or_unsigned_saved_catalogue_is_ignored(tmp_path: Path) -> None:
    signer = CacheSigner.ephemeral()
    version = VersionRecord("3", "run", "models:/m-1", "2026-01-01T00:00:00+00:00", "ab" * 32)
    catalog = Catalog({"cnn": ModelRecord("cnn", "brain-tumor-cnn", {"3": version}, {})})
    model_store.save_catalog(tmp_path, catalog, "http://127.0.0.1:5000", signer)
    assert model_store.load_catalog(tmp_path, "http://127.0.0.1:5000", signer) is not None
    assert model_store.load_catalog(tmp_path, "http://127.0.0.1:5001", signer) is None  # another MLflow's
    assert model_store.load_catalog(tmp_path, "http://127.0.0.1:5000", CacheSigner.ephemeral()) is None  # other key
    path = tmp_path / model_store.CATALOG_FILENAME
    saved = path.read_text()
    path.write_text(saved.replace("ab" * 32, "cd" * 32))  # an expected sha256 edited to match an edited file
    assert model_store.load_catalog(tmp_path, "http://127.0.0.1:5000", signer) is None
    unsigned = json.loads(saved)
    del unsigned[model_store.SIGNATURE_KEY]
    path.write_text(json.dumps(unsigned))
    assert model_store.load_catalog(tmp_path, "http://127.0.0.1:5000", signer) is None
    path.write_text("{not json")
    assert model_store.load_catalog(tmp_path, "http://127.0.0.1:5000", signer) is None


def test_the_breaker_lets_one_probe_through_per_interval() -> None:
    breaker = CircuitBreaker(retry_interval_s=0.2)
    assert breaker.allow() and breaker.try_probe() and breaker.describe() == "reachable"
    breaker.failure()
    assert not breaker.allow()
    assert breaker.describe().startswith("unreachable since ")
    assert not breaker.try_probe()  # too soon after the failure
    time.sleep(0.25)
    assert breaker.try_probe()
    assert not breaker.try_probe()  # one probe at a time
    breaker.failure()
    assert not breaker.try_probe()
    time.sleep(0.25)
    assert breaker.try_probe()
    breaker.success()
    assert breaker.allow() and breaker.unreachable_since is None
