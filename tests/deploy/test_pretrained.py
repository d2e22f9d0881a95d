"""deploy.pretrained: a bundle built from a registry's versions, registered into a fresh real MLflow and served
by a real inference process; a tampered bundle is refused before anything is registered."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from deploy import pretrained
from deploy.bundle import (
    GUARD_KEY,
    BundledEnsemble,
    BundledGuard,
    BundleError,
    DataProvenance,
    load_bundle,
    write_bundle,
)
from deploy.pretrained import BUNDLE_DIR
from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from shared.core.conformal import ConformalSets
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.core.ensemble_spec import EnsembleSpec
from shared.kit.schemas import CHAMPION_ALIAS, ENSEMBLE_MODEL, GUARD_REGISTERED_NAME, PRETRAINED_TAG, registered_name
from tests.conftest import TEST_MLFLOW_CREDENTIALS, ModelZoo, SampleArrays, fit_sample_guard, mobilenetv2_weights_path

# model_zoo has a champion only for rf: bundle one chosen version of each family.
ZOO_VERSIONS = {"rf": "1", "snn": "1", "cnn": "2", "mobilenetv2": "1"}
WEIGHTS = {"rf": 0.5, "snn": 0.0, "cnn": 0.25, "mobilenetv2": 0.25}  # the shallow net left out, as training does
SETS = ConformalSets(calibration_images=24, thresholds={"0.05": 0.6, "0.1": 0.4})


def sample_guard(sample_arrays: SampleArrays) -> bytes:
    """A guard fitted on half the sample, its threshold the highest score of the other half."""
    from services.training.ood_guard import guard_onnx

    return guard_onnx(fit_sample_guard(sample_arrays, mobilenetv2_weights_path()))


@pytest.fixture(scope="module")
def bundle(model_zoo: ModelZoo, sample_arrays: SampleArrays, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    data = DataProvenance(
        description="the embedded sample (120 images)",
        fingerprint="",
        images=120,
        evaluation="evaluated on the tests' fixtures, refit on all 120 images",
    )
    manifest = pretrained.build(model_zoo.tracking_uri, folder, data, command="pytest", versions=ZOO_VERSIONS)
    # The zoo has no ensemble and no guard: add them, as a full-data run's bundle carries them.
    ensemble = BundledEnsemble(
        registered_name=registered_name(ENSEMBLE_MODEL), weights=WEIGHTS, conformal=SETS, temperature=0.7,
        test_metrics={"test_accuracy": 0.9},
    )  # fmt: skip
    guard = BundledGuard(registered_name=GUARD_REGISTERED_NAME, file="guard.onnx", sha256="0" * 64, size_bytes=1)
    files = {**load_bundle(folder)[1], GUARD_KEY: sample_guard(sample_arrays)}
    write_bundle(folder, manifest.model_copy(update={"ensemble": ensemble, "guard": guard}), files)
    return folder


@pytest.fixture(scope="module")
def fresh_mlflow(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[ManagedProcess]:
    server = start_mlflow(
        tmp_path_factory.mktemp("mlflow-fresh"),
        free_port(),
        service_logs / "mlflow-fresh.log",
        credentials=TEST_MLFLOW_CREDENTIALS,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registered(bundle: Path, fresh_mlflow: ManagedProcess) -> dict[str, str]:
    return pretrained.register(fresh_mlflow.url, bundle)


@pytest.fixture(scope="module")
def served(
    registered: dict[str, str],
    fresh_mlflow: ManagedProcess,
    tmp_path_factory: pytest.TempPathFactory,
    service_logs: Path,
) -> Iterator[ManagedProcess]:
    env = {
        "MLFLOW_TRACKING_URI": fresh_mlflow.url,
        "BT_INFERENCE_TRACKING_URI": fresh_mlflow.url,
        "BT_INFERENCE_CACHE_DIR": str(tmp_path_factory.mktemp("inference-cache-pretrained")),
    }
    server = start_service("inference", free_port(), env, service_logs / "inference-pretrained.log")
    yield server
    server.stop()


def test_build_writes_every_manifest_field_from_the_registry(bundle: Path, model_zoo: ModelZoo) -> None:
    manifest, files = load_bundle(bundle)
    assert {m.model for m in manifest.models} == set(ZOO_VERSIONS)
    for model in manifest.models:
        trained = model_zoo.version(model.model, ZOO_VERSIONS[model.model])
        assert model.source_version == ZOO_VERSIONS[model.model]
        assert model.test_metrics == trained.metrics
        assert model.file == f"{model.model}.onnx" and model.size_bytes == len(files[model.model])
    assert manifest.command == "pytest" and manifest.commit
    assert manifest.data.fingerprint  # the test split's sha256 when the run tagged it, else "unknown"


def test_build_refuses_a_bundle_over_its_size_budget(model_zoo: ModelZoo, tmp_path: Path) -> None:
    data = DataProvenance(description="sample", fingerprint="x", images=120, evaluation="fixtures")
    with pytest.raises(BundleError, match=r"over 0 MB.*nothing was written"):
        pretrained.build(model_zoo.tracking_uri, tmp_path / "b", data, versions=ZOO_VERSIONS, max_bytes=1000)
    assert not (tmp_path / "b").exists()


def test_build_can_keep_the_bundles_own_guard(bundle: Path, model_zoo: ModelZoo, tmp_path: Path) -> None:
    """A family rebuilt against a registry that holds no guard (the zoo's) keeps the guard refit-guard fitted."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    before, before_files = load_bundle(folder)
    data = DataProvenance(description="sample", fingerprint="x", images=120, evaluation="fixtures")
    manifest = pretrained.build(model_zoo.tracking_uri, folder, data, versions=ZOO_VERSIONS, keep_guard=True)
    assert manifest.guard == before.guard and load_bundle(folder)[1][GUARD_KEY] == before_files[GUARD_KEY]
    unguarded = pretrained.build(model_zoo.tracking_uri, tmp_path / "unguarded", data, versions=ZOO_VERSIONS)
    assert unguarded.guard is None  # the zoo has none
    with pytest.raises(BundleError, match="no guard to keep"):
        pretrained.build(model_zoo.tracking_uri, tmp_path / "unguarded", data, versions=ZOO_VERSIONS, keep_guard=True)


def test_register_tags_metrics_and_champion_alias(
    registered: dict[str, str], fresh_mlflow: ManagedProcess, bundle: Path
) -> None:
    manifest, files = load_bundle(bundle)
    client = MlflowClient(tracking_uri=fresh_mlflow.url, registry_uri=fresh_mlflow.url)
    for model in manifest.models:
        version = client.get_model_version_by_alias(model.registered_name, CHAMPION_ALIAS)
        assert version.version == registered[model.model] == "1"
        assert version.tags["onnx_sha256"] == model.sha256
        assert version.tags[PRETRAINED_TAG] == manifest.label()
        assert client.get_run(version.run_id).data.metrics == model.test_metrics
    ensemble = client.get_model_version_by_alias(registered_name(ENSEMBLE_MODEL), CHAMPION_ALIAS)
    assert ensemble.tags["member_rf"] == registered["rf"]
    assert EnsembleSpec.from_tags(ensemble.tags).conformal == SETS  # its prediction sets, registered as trained
    assert EnsembleSpec.from_tags(ensemble.tags).temperature == 0.7  # and its own temperature
    guard = client.get_model_version_by_alias(GUARD_REGISTERED_NAME, CHAMPION_ALIAS)
    assert guard.version == registered[GUARD_KEY]
    assert manifest.guard is not None and guard.tags["onnx_sha256"] == manifest.guard.sha256


def test_served_bundle_answers_as_the_models_it_was_built_from(
    served: ManagedProcess, model_zoo: ModelZoo, sample_images: dict[str, bytes], bundle: Path
) -> None:
    image = sample_images["glioma"]
    with httpx.Client(base_url=served.url, timeout=60.0, trust_env=False) as client:
        for model, zoo_version in ZOO_VERSIONS.items():
            response = client.post(f"/v1/models/{model}/predict", files={"file": ("a.jpg", image)})
            assert response.status_code == 200, response.text
            expected = model_zoo.version(model, zoo_version).expected_probabilities(image)
            got = list(response.json()["probabilities"].values())
            assert got == pytest.approx(list(expected), abs=1e-4)
            assert response.json()["ood"]["guard_version"] == "1"  # the bundle's guard judged the upload
        listing = {m["model"]: m for m in client.get("/v1/models").json()["models"]}
        label = load_bundle(bundle)[0].label()
        assert all(listing[model]["versions"][0]["pretrained_on"] == label for model in ZOO_VERSIONS)
        answer = client.post("/v1/models/ensemble/predict", files={"file": ("a.jpg", image)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["members"] == {"rf": "1", "cnn": "1", "mobilenetv2": "1"}


def test_a_tampered_bundle_is_refused_before_registering(
    bundle: Path, tmp_path: Path, fresh_mlflow: ManagedProcess
) -> None:
    tampered = tmp_path / "bundle"
    shutil.copytree(bundle, tampered)
    data = bytearray((tampered / "cnn.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "cnn.onnx").write_bytes(bytes(data))
    client = MlflowClient(tracking_uri=fresh_mlflow.url, registry_uri=fresh_mlflow.url)
    before = {m.name: m.latest_versions for m in client.search_registered_models()}
    with pytest.raises(BundleError, match=r"cnn\.onnx differs from the manifest"):
        pretrained.register(fresh_mlflow.url, tampered)
    assert pretrained.main(["register", "--bundle", str(tampered), "--tracking-uri", fresh_mlflow.url]) == 1
    after = {m.name: m.latest_versions for m in client.search_registered_models()}
    assert len(after) == len(before) and all(len(after[n]) == len(before[n]) for n in before)


def test_refit_guard_replaces_the_guard_alone_and_records_how(
    bundle: Path, tmp_path: Path, mobilenetv2_weights: Path
) -> None:
    import json

    import onnx

    from shared.core.guard_input import GUARD_INPUT_KIND
    from shared.kit.schemas import GUARD_METADATA_KEY

    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    before, before_files = load_bundle(folder)
    guard = pretrained.refit_guard(SAMPLE_DATA_DIR, folder, seed=3, weights=mobilenetv2_weights)
    after, files = load_bundle(folder)  # every checksum verified again
    assert after.guard == guard and guard.command is not None and "refit-guard" in guard.command
    assert guard.sha256 != before.guard.sha256  # type: ignore[union-attr]
    assert after.models == before.models and all(files[m.model] == before_files[m.model] for m in after.models)
    proto = onnx.load_from_string(files[GUARD_KEY])
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}[GUARD_METADATA_KEY])
    assert metadata["input_kind"] == GUARD_INPUT_KIND and metadata["cv_images"] == 120
    assert metadata["flag_threshold"] <= metadata["threshold"]


def test_update_ensemble_replaces_the_ensemble_alone_when_its_members_are_the_bundled_versions(
    registered: dict[str, str], fresh_mlflow: ManagedProcess, bundle: Path, tmp_path: Path
) -> None:
    """The fresh registry's ensemble champion pins the versions the bundle was registered as: a bundle built from
    that registry takes it back; the fixture's bundle, whose models are the zoo's versions, is refused."""
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="cnn version 1 is not the bundled file"):
        pretrained.update_ensemble(fresh_mlflow.url, "ensemble_cli ...", bundle)
    command = ["update-ensemble", "--bundle", str(bundle), "--from-registry", fresh_mlflow.url]
    assert pretrained.main([*command, "--command-line", "ensemble_cli ..."]) == 1
    assert (bundle / "manifest.json").read_bytes() == before
    folder = tmp_path / "bundle"
    data = DataProvenance(description="sample", fingerprint="x", images=120, evaluation="fixtures")
    manifest = pretrained.build(fresh_mlflow.url, folder, data, command="pytest")
    files = load_bundle(folder)[1]
    assert manifest.ensemble is not None
    stale = manifest.ensemble.model_copy(update={"weights": {"rf": 1.0, "cnn": 0.5}, "temperature": 1.0})
    write_bundle(folder, manifest.model_copy(update={"ensemble": stale}), files)
    ensemble = pretrained.update_ensemble(fresh_mlflow.url, "ensemble_cli --members ...", folder)
    after, after_files = load_bundle(folder)  # every checksum verified again
    assert after.ensemble == ensemble and ensemble.weights == WEIGHTS and ensemble.temperature == 0.7
    assert ensemble.conformal == SETS and ensemble.test_metrics == {"test_accuracy": 0.9}
    assert ensemble.command is not None and ensemble.command.startswith("ensemble_cli --members ... && ")
    assert "update-ensemble" in ensemble.command
    assert after.models == manifest.models and after.guard == manifest.guard and after_files == files


def test_train_command_prints_every_run_the_bundled_models_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    assert pretrained.main(["train-command"]) == 0
    steps = capsys.readouterr().out.splitlines()
    assert len(steps) == 4
    # The bundled MobileNetV2 was trained whole at 224 px; its run is in the list, then the ensemble over it.
    manifest = json.loads((BUNDLE_DIR / "manifest.json").read_text())
    whole = "--families mobilenetv2 --search quick --set fine_tune_blocks=16 --set image_size=224"
    assert whole in steps[1] and whole in manifest["command"]
    assert "ensemble_cli" in steps[2] and "--members rf=1,snn=1,cnn=1,mobilenetv2=2" in manifest["command"]
    assert "--refit-champions --promote" in steps[3]
