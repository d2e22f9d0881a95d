"""MlflowStore against a real MLflow server: the catalogue, downloads into the cache (MLflow Models and
versions registered in the older bare-folder layout), run metrics, failures."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from services.inference.catalog import ModelRecord, VersionRecord
from services.inference.mlflow_store import MlflowStore, configure_mlflow_http
from services.inference.model_store import cache_path
from shared.core.contract import ONNX_ARTIFACT_DIR, ONNX_FILENAME, PreprocessingContract
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import REGISTERED_NAME_PREFIX
from tests.conftest import register_onnx_model


@pytest.fixture(scope="module", autouse=True)
def _bounded_mlflow_calls() -> None:
    configure_mlflow_http(timeout_s=5, max_retries=0)


def _register_files(
    tracking_uri: str, registered_name: str, files: dict[str, bytes]
) -> tuple[ModelRecord, VersionRecord]:
    """Register a version whose artifact folder holds ``files``, under a name outside the catalogue's prefix."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name("store-tests")
    experiment_id = found.experiment_id if found else client.create_experiment("store-tests")
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        client.log_artifacts(run.info.run_id, folder, artifact_path=ONNX_ARTIFACT_DIR)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(registered_name)
    source = f"{run.info.artifact_uri}/{ONNX_ARTIFACT_DIR}"
    version = client.create_model_version(registered_name, source=source, run_id=run.info.run_id)
    record = VersionRecord(str(version.version), run.info.run_id, source, None)
    return ModelRecord("broken", registered_name, {record.version: record}, {}), record


def test_catalog_mirrors_the_registry(model_zoo: Any, tmp_path: Path) -> None:
    catalog = MlflowStore(model_zoo.tracking_uri, tmp_path).fetch_catalog()
    assert catalog.names() == ["rf", "snn", "cnn", "mobilenetv2"]
    for name, trained in model_zoo.versions.items():
        record = catalog.models[name]
        assert record.registered_name == f"{REGISTERED_NAME_PREFIX}{name}"
        assert record.aliases == model_zoo.aliases.get(name, {})
        assert {number: v.run_id for number, v in record.versions.items()} == {t.version: t.run_id for t in trained}
        # The zoo registers as training does: each version is a logged MLflow Model, not a run's folder.
        assert all(v.source.startswith("models:/m-") and v.created_at for v in record.versions.values())


def test_download_lands_once_in_the_cache(model_zoo: Any, tmp_path: Path) -> None:
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)
    record = store.fetch_catalog().models["snn"]
    version = record.versions["1"]
    path = store.download(record, version)
    assert path == cache_path(store.cache_dir, record, version) / ONNX_FILENAME
    assert path.is_relative_to(tmp_path / record.registered_name)
    before = path.stat().st_mtime_ns
    assert store.download(record, version) == path
    assert path.stat().st_mtime_ns == before
    assert [p.name for p in path.parent.parent.iterdir()] == [path.parent.name]  # no staging folder left


def test_cache_path_is_pinned_to_the_content(model_zoo: Any, tmp_path: Path) -> None:
    # A reset registry can hand out version 1 again for another file: the cache must not mix them up.
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)
    record = store.fetch_catalog().models["rf"]
    first = record.versions["1"]
    reused = VersionRecord(first.version, "another-run", first.source, None)
    assert cache_path(store.cache_dir, record, first) != cache_path(store.cache_dir, record, reused)
    relisted = VersionRecord(first.version, first.run_id, first.source, "2020-01-01T00:00:00+00:00")
    assert cache_path(store.cache_dir, record, first) == cache_path(store.cache_dir, record, relisted)


def test_a_version_removed_meanwhile_is_version_not_found(model_zoo: Any, tmp_path: Path) -> None:
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)
    record = store.fetch_catalog().models["rf"]
    with pytest.raises(ServiceError) as caught:
        store.download(record, VersionRecord("99", None, "nowhere", None))
    assert caught.value.code is ErrorCode.VERSION_NOT_FOUND
    assert "version 99 was removed" in caught.value.message


@pytest.mark.parametrize(
    ("files", "found"),
    [({"notes.txt": b"no model here"}, "[]"), ({"a.onnx": b"1", "b.onnx": b"2"}, "['a.onnx', 'b.onnx']")],
)
def test_an_artifact_without_one_onnx_file_is_invalid_model(
    model_zoo: Any, tmp_path: Path, files: dict[str, bytes], found: str
) -> None:
    name = f"store-test-{len(files)}-files"
    record, version = _register_files(model_zoo.tracking_uri, name, files)
    with pytest.raises(ServiceError) as caught:
        MlflowStore(model_zoo.tracking_uri, tmp_path).download(record, version)
    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert f"expected {ONNX_FILENAME} in the artifact, found {found}" in caught.value.message
    assert not list((tmp_path / name).iterdir())  # the staging folder is gone


def test_an_mlflow_model_without_the_onnx_flavor_is_invalid_model(model_zoo: Any, tmp_path: Path) -> None:
    mlmodel = b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    pickled_model: m.pkl\n"
    files = {"MLmodel": mlmodel, "model.onnx": b"1"}
    record, version = _register_files(model_zoo.tracking_uri, "store-test-sklearn", files)
    with pytest.raises(ServiceError) as caught:
        MlflowStore(model_zoo.tracking_uri, tmp_path).download(record, version)
    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert "has no onnx flavor (its flavors: ['python_function', 'sklearn'])" in caught.value.message


def _catalogued(tracking_uri: str, registered_name: str, version: str) -> tuple[ModelRecord, VersionRecord]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_model_version(registered_name, version)
    record = VersionRecord(version, found.run_id, found.source, None)
    return ModelRecord("layouts", registered_name, {version: record}, {}), record


def test_both_layouts_download_the_registered_file(model_zoo: Any, make_onnx: Any, tmp_path: Path) -> None:
    onnx_bytes, _ = make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=16))
    name = "store-test-layouts"
    old, _ = register_onnx_model(model_zoo.tracking_uri, "old", onnx_bytes, layout="bare-onnx", registered_as=name)
    new, _ = register_onnx_model(model_zoo.tracking_uri, "new", onnx_bytes, registered_as=name)
    store = MlflowStore(model_zoo.tracking_uri, tmp_path)
    sources = {}
    for version in (old, new):
        record, version_record = _catalogued(model_zoo.tracking_uri, name, version)
        assert store.download(record, version_record).read_bytes() == onnx_bytes
        sources[version] = version_record.source
    assert sources[old].endswith(f"/{ONNX_ARTIFACT_DIR}") and sources[new].startswith("models:/m-")


def test_run_metrics_are_the_headline_ones(model_zoo: Any, tmp_path: Path) -> None:
    trained = model_zoo.version("rf", "2")
    assert MlflowStore(model_zoo.tracking_uri, tmp_path).run_metrics(trained.run_id) == trained.metrics
    narrow = MlflowStore(model_zoo.tracking_uri, tmp_path, metric_prefixes=("test_f1",))
    assert narrow.run_metrics(trained.run_id) == {"test_f1_macro": trained.metrics["test_f1_macro"]}
    assert narrow.run_metrics(None) == {}
    assert narrow.run_metrics("0" * 32) == {}  # a deleted run: the version still serves, without metrics


def test_an_undefined_metric_is_left_out(model_zoo: Any, tmp_path: Path) -> None:
    # A run whose answers were all referred has no accuracy of the unreferred ones: NaN is no JSON number.
    client = MlflowClient(model_zoo.tracking_uri)
    run_id = client.create_run(experiment_id="0").info.run_id
    client.log_metric(run_id, "test_accuracy", 0.5)
    client.log_metric(run_id, "test_accuracy_not_referred", float("nan"))
    client.set_terminated(run_id)
    assert MlflowStore(model_zoo.tracking_uri, tmp_path).run_metrics(run_id) == {"test_accuracy": 0.5}


def test_a_finished_run_is_asked_once(model_zoo: Any, tcp_proxy: Any, tmp_path: Path) -> None:
    proxy = tcp_proxy(model_zoo.tracking_uri)
    store = MlflowStore(proxy.url, tmp_path)
    trained = model_zoo.version("cnn", "1")
    assert store.run_metrics(trained.run_id) == trained.metrics

    proxy.close()

    assert store.run_metrics(trained.run_id) == trained.metrics
    with pytest.raises(ServiceError) as caught:
        store.run_metrics(model_zoo.version("cnn", "2").run_id)
    assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE


def test_unreachable_mlflow_is_registry_unavailable_without_its_address(tmp_path: Path, unused_url: str) -> None:
    store = MlflowStore(unused_url, tmp_path)
    record = ModelRecord("rf", f"{REGISTERED_NAME_PREFIX}rf", {}, {})
    calls = {
        "listing registered models": store.fetch_catalog,
        "downloading rf version 1": lambda: store.download(record, VersionRecord("1", None, "", None)),
        "reading run metrics": lambda: store.run_metrics("0" * 32),
    }
    for what, call in calls.items():
        with pytest.raises(ServiceError) as caught:
            call()
        assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE
        assert f"failed while {what}" in caught.value.message
        assert unused_url not in caught.value.message
