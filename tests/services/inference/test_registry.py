"""ModelRegistry against a real MLflow server holding the test zoo."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference.listing import list_models
from services.inference.mlflow_store import configure_mlflow_http
from services.inference.registry import ModelRegistry, open_registry
from shared.core.contract import CLASS_NAMES, ONNX_FILENAME
from shared.kit.errors import ErrorCode, ServiceError


@pytest.fixture(scope="module")
def registry(model_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    configure_mlflow_http(timeout_s=10, max_retries=0)
    return open_registry(model_zoo.tracking_uri, tmp_path_factory.mktemp("registry-cache"))


@pytest.mark.parametrize(
    ("model", "spec", "expected"),
    [
        ("rf", None, "1"),  # champion alias wins over the latest version
        ("rf", "champion", "1"),
        ("rf", "2", "2"),
        ("rf", "latest", "2"),
        ("snn", None, "1"),
        ("snn", "best", "1"),
        ("cnn", None, "2"),  # no champion: the latest version
        ("cnn", "1", "1"),
        ("mobilenetv2", "", "1"),
    ],
)
def test_resolve_versions_and_aliases(registry: ModelRegistry, model: str, spec: str | None, expected: str) -> None:
    record, version = registry.resolve(model, spec)
    assert record.short_name == model
    assert record.registered_name == f"brain-tumor-{model}"
    assert version.version == expected


def test_unknown_model_names_the_available_ones(registry: ModelRegistry) -> None:
    with pytest.raises(ServiceError) as caught:
        registry.get("resnet")
    error = caught.value
    assert error.code is ErrorCode.MODEL_NOT_FOUND
    assert error.status == 404
    assert "'resnet'" in error.message
    assert "rf, snn, cnn, mobilenetv2" in error.message
    assert error.details["available_models"] == ["rf", "snn", "cnn", "mobilenetv2"]


@pytest.mark.parametrize("spec", ["9", "staging"])
def test_unknown_version_names_the_available_ones(registry: ModelRegistry, spec: str) -> None:
    with pytest.raises(ServiceError) as caught:
        registry.get("rf", spec)
    error = caught.value
    assert error.code is ErrorCode.VERSION_NOT_FOUND
    assert f"{spec!r}" in error.message
    assert "Available versions: 2, 1; aliases: champion -> 1." in error.message
    assert error.details == {"available_versions": ["2", "1"], "aliases": {"champion": "1"}}


def test_get_loads_each_version_once_even_under_concurrency(registry: ModelRegistry, sample_images) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        classifiers = list(pool.map(lambda _: registry.get("cnn", "1"), range(12)))
    assert all(c is classifiers[0] for c in classifiers)
    assert classifiers[0].ready
    assert registry.get("cnn", "1") is registry.get("cnn", "1")
    files = list((registry.cache_dir / "brain-tumor-cnn").glob(f"*/{ONNX_FILENAME}"))
    assert len(files) == 1
    assert "cnn/1" in registry.loaded.states()
    # No half-finished downloads left behind.
    assert not list((registry.cache_dir / "brain-tumor-cnn").glob(".download-*"))


def test_served_probabilities_match_the_trained_estimator(
    registry: ModelRegistry, model_zoo: Any, sample_images: dict[str, bytes]
) -> None:
    for model, versions in model_zoo.versions.items():
        for trained in versions:
            classifier = registry.get(model, trained.version)
            assert classifier.contract == trained.contract
            for image in sample_images.values():
                result = classifier.classify(image)
                got = np.array([result.probabilities[name] for name in CLASS_NAMES])
                np.testing.assert_allclose(got, trained.expected_probabilities(image), atol=1e-5)


def test_a_second_registry_reuses_the_download_cache(registry: ModelRegistry, model_zoo: Any) -> None:
    registry.get("snn", "1")
    cached = next((registry.cache_dir / "brain-tumor-snn").glob(f"*/{ONNX_FILENAME}"))
    before = cached.stat().st_mtime_ns
    again = open_registry(model_zoo.tracking_uri, registry.cache_dir).get("snn", "1")
    assert again.source == cached
    assert cached.stat().st_mtime_ns == before


def test_list_models_has_versions_aliases_metrics_and_defaults(registry: ModelRegistry, model_zoo: Any) -> None:
    listing = list_models(registry)
    by_name = {info.model: info for info in listing.models}
    assert list(by_name) == ["rf", "snn", "cnn", "mobilenetv2"]
    rf = by_name["rf"]
    assert rf.registered_name == "brain-tumor-rf"
    assert rf.default_version == "1"
    assert [v.version for v in rf.versions] == ["2", "1"]
    assert rf.versions[1].aliases == ["champion"]
    assert rf.versions[1].metrics == model_zoo.version("rf", "1").metrics
    assert rf.versions[1].run_id == model_zoo.version("rf", "1").run_id
    assert rf.versions[1].created_at
    assert by_name["cnn"].default_version == "2"
    assert by_name["snn"].versions[0].aliases == ["best"]


def test_metric_prefixes_narrow_the_headline_metrics(model_zoo: Any, tmp_path: Path) -> None:
    narrow = open_registry(model_zoo.tracking_uri, tmp_path, metric_prefixes=("test_acc",))
    rf = next(info for info in list_models(narrow).models if info.model == "rf")
    assert set(rf.versions[0].metrics) == {"test_accuracy"}


def test_unreachable_mlflow_is_registry_unavailable(tmp_path: Path, unused_url: str) -> None:
    configure_mlflow_http(timeout_s=5, max_retries=0)
    offline = open_registry(unused_url, tmp_path)
    for call in (lambda: offline.get("rf"), lambda: list_models(offline), offline.ping):
        with pytest.raises(ServiceError) as caught:
            call()
        assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE
        assert caught.value.status == 503
        assert unused_url not in caught.value.message  # internal addresses stay in the log
    offline.preload_defaults()  # logs, never raises
    assert offline.loaded.states() == {}


def test_loaded_versions_keep_answering_while_mlflow_is_down(
    model_zoo: Any, tcp_proxy: Any, tmp_path: Path, sample_images: dict[str, bytes]
) -> None:
    proxy = tcp_proxy(model_zoo.tracking_uri)
    configure_mlflow_http(timeout_s=5, max_retries=0)
    registry = open_registry(proxy.url, tmp_path, catalog_ttl_s=0)  # ask MLflow on every call
    classifier = registry.get("rf")
    registry.ping()

    proxy.close()

    # The last snapshot still resolves the default and aliases to the loaded version...
    assert registry.get("rf") is classifier
    assert registry.get("rf", "champion") is classifier
    assert classifier.classify(sample_images["glioma"]).label
    assert [info.model for info in list_models(registry).models] == ["rf", "snn", "cnn", "mobilenetv2"]
    # ...but nothing that needs MLflow itself can succeed.
    for call in (lambda: registry.get("rf", "2"), registry.ping):
        with pytest.raises(ServiceError) as caught:
            call()
        assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE


def test_an_expired_catalogue_is_refreshed_by_one_request_while_the_others_keep_the_snapshot(
    model_zoo: Any, tmp_path: Path
) -> None:
    registry = open_registry(model_zoo.tracking_uri, tmp_path, catalog_ttl_s=0.2)
    fetch = registry.store.fetch_catalog
    fetches: list[float] = []

    def counted_fetch(**options: Any) -> Any:
        fetches.append(0.0)
        return fetch(**options)

    registry.store.fetch_catalog = counted_fetch  # type: ignore[method-assign]
    first = registry.snapshot.current()
    time.sleep(0.3)  # the snapshot is now older than its TTL
    with ThreadPoolExecutor(max_workers=8) as pool:
        snapshots = list(pool.map(lambda _: registry.snapshot.current(), range(16)))
    deadline = time.monotonic() + 10
    while len(fetches) < 2 and time.monotonic() < deadline:  # the refresh runs in the background
        time.sleep(0.01)
    assert 2 <= len(fetches) <= 3, fetches  # the first fill, then one refresh (a second only if it came late)
    assert all(snapshot.models.keys() == first.models.keys() for snapshot in snapshots)
    # A forced look (a name the snapshot does not know) still asks MLflow itself.
    before = len(fetches)
    registry.snapshot.current(max_age_s=0)
    assert len(fetches) == before + 1
