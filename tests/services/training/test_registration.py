"""The one registration path and its promotion gate, against a real MLflow server of this module's own: champion
moves to a version only when it beats the champion on the same images, or when asked; a demonstration run on the
sample leaves the pretrained bundle's champions (and its guard) where they are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from deploy import pretrained
from deploy.processes import ManagedProcess, free_port, start_mlflow
from services.training import registration, tracking
from services.training.config import TrainingSettings
from services.training.options import FamilyState, Registration, TrainingOptions
from services.training.pipeline import run_training
from services.training.registration import LoggedFile, Standing, promote, standing_on_test_split
from shared.core.contract import PreprocessingContract
from shared.kit.schemas import CHAMPION_ALIAS, GUARD_REGISTERED_NAME, registered_name

SPLIT, OTHER_SPLIT = "split-a", "split-b"


@pytest.fixture(scope="module")
def gate_mlflow(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[ManagedProcess]:
    state = tmp_path_factory.mktemp("gate-mlflow")
    server = start_mlflow(state / "store", free_port(), service_logs / "mlflow-gate.log")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    mlflow.set_experiment("gate")
    yield server
    mlflow.set_tracking_uri(previous)
    server.stop()


@pytest.fixture(scope="module")
def onnx_file(make_onnx: Any) -> bytes:
    return make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=16))[0]


def _version(name: str, onnx_bytes: bytes, standing: Standing) -> str:
    """A finished run with its figure and its logged model, registered as the pipeline registers one."""
    with mlflow.start_run():
        if standing.value is not None:
            mlflow.log_metric(standing.metric, standing.value)
        logged = tracking.log_onnx_model(onnx_bytes, name="model")
        return registration.register(name, LoggedFile.of_model(logged), onnx_bytes, "tests", {}, standing)


def _champion(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).version)


def test_champion_moves_only_to_a_version_that_beats_it_on_the_same_split(
    gate_mlflow: ManagedProcess, onnx_file: bytes
) -> None:
    name = "gate-classifier"

    def offer(split: str, accuracy: float | None, explicit: bool = False) -> Registration:
        standing = standing_on_test_split(split, {} if accuracy is None else {"test_accuracy": accuracy})
        return promote(name, _version(name, onnx_file, standing), standing, explicit)

    first = offer(SPLIT, 0.8)
    assert first.champion and "first version" in first.reason
    worse = offer(SPLIT, 0.7)
    assert not worse.champion and "does not beat" in worse.reason
    elsewhere = offer(OTHER_SPLIT, 0.99)  # a demo split: its figure says nothing about the champion's images
    assert not elsewhere.champion and "not comparable" in elsewhere.reason
    refit = offer(SPLIT, None)
    assert not refit.champion and "no test figure" in refit.reason
    assert _champion(name) == first.version
    better = offer(SPLIT, 0.9)
    assert better.champion and _champion(name) == better.version
    asked = offer(OTHER_SPLIT, 0.1, explicit=True)
    assert asked.champion and asked.reason == "promoted on request" and _champion(name) == asked.version


def test_a_guard_replaces_the_champion_only_when_it_refuses_no_more_real_scans(
    gate_mlflow: ManagedProcess, onnx_file: bytes
) -> None:
    name = "gate-guard"

    def offer(rate: float) -> Registration:
        standing = Standing("images", "the-folder", "false_refusals", rate, higher_is_better=False, ties_promote=True)
        return promote(name, _version(name, onnx_file, standing), standing)

    first = offer(0.002)
    assert first.champion
    assert offer(0.002).champion  # no worse is enough
    assert not offer(0.003).champion
    assert offer(0.001).champion


def test_a_demo_run_leaves_the_bundles_champions_and_an_explicit_promotion_moves_them(
    training_settings: TrainingSettings, tmp_path: Path, service_logs: Path
) -> None:
    server = start_mlflow(tmp_path / "store", free_port(), service_logs / "mlflow-demo-run.log")
    try:
        settings = training_settings.model_copy(update={"tracking_uri": server.url, "report_dir": tmp_path / "reports"})
        bundled = pretrained.register(server.url)
        client = MlflowClient(server.url)
        rf, guard = registered_name("rf"), GUARD_REGISTERED_NAME
        seen: list[Any] = []
        demo = TrainingOptions(families=["rf"], search="none", overrides={"n_estimators": 10})  # the sample

        results = run_training(demo, settings, seen.append)

        assert results[0].state is FamilyState.DONE
        outcome = next(p for p in seen if isinstance(p, Registration))
        assert (outcome.registered_name, outcome.champion) == (rf, False)
        assert "not comparable" in outcome.reason
        assert client.get_model_version_by_alias(rf, CHAMPION_ALIAS).version == bundled["rf"]
        # Asked only for the forest: no guard was fitted, the bundle's stays the only one.
        assert [v.version for v in client.search_model_versions(f"name='{guard}'")] == [bundled["guard"]]

        # Asked for both: the forest and a guard fitted on the sample, its false refusals cross-validated.
        seen.clear()
        promoted = run_training(demo.model_copy(update={"promote": True, "fit_guard": True}), settings, seen.append)
        assert client.get_model_version_by_alias(rf, CHAMPION_ALIAS).version == promoted[0].registered_version
        assert promoted[0].registered_version != bundled["rf"]
        new_guard = client.get_model_version_by_alias(guard, CHAMPION_ALIAS)
        assert new_guard.version != bundled["guard"]
        assert {p.registered_name for p in seen if isinstance(p, Registration) and p.champion} == {rf, guard}
        rate = client.get_run(new_guard.run_id).data.metrics["guard_false_refusal_cv"]
        assert 0 <= rate <= 1 and new_guard.tags["guard_images_sha256"]
    finally:
        server.stop()
