"""The split check of benchmarks.explain_split: the split training makes, the tags it is compared with."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from benchmarks.explain_split import (
    MEMBERS_TAG,
    SPLIT_SEED,
    TEST_FRACTION,
    choose_images,
    mlflow_tags,
    pinned_versions,
    recompute_split,
    split_mismatches,
)
from deploy.credentials import mlflow_auth_from_env
from deploy.processes import ManagedProcess, free_port, start_mlflow
from services.training.cli import _test_fraction, build_parser
from services.training.registration import TEST_SPLIT_TAG
from shared.core.contract import CLASS_NAMES
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.kit.schemas import registered_name


def test_the_split_is_the_one_a_training_run_makes_by_default() -> None:
    defaults = build_parser().parse_args([])
    assert (_test_fraction(defaults), defaults.seed) == (TEST_FRACTION, SPLIT_SEED)


def test_images_are_drawn_from_the_part_asked_for(tmp_path: Path) -> None:
    split = recompute_split(SAMPLE_DATA_DIR, tmp_path)
    chosen = choose_images(split.test_files, CLASS_NAMES, 2)
    assert len(chosen) == 2 * len(CLASS_NAMES)
    assert set(chosen) <= set(split.test_files.paths)
    assert not set(chosen) & set(split.train_files.paths)
    assert [path.parent.name for path in chosen] == [name for name in CLASS_NAMES for _ in range(2)]
    assert chosen == choose_images(split.test_files, CLASS_NAMES, 2)
    assert set(choose_images(split.train_files, CLASS_NAMES, 3)) <= set(split.train_files.paths)
    with pytest.raises(ValueError, match="fewer than"):
        choose_images(split.test_files, CLASS_NAMES, 1000)


def tag_table(tags: Mapping[tuple[str, str], Mapping[str, str]]):
    return lambda name, version: tags[(name, version)]


def test_an_ensemble_s_members_are_checked_too() -> None:
    tags = {
        (registered_name("cnn"), "1"): {TEST_SPLIT_TAG: "aaa"},
        (registered_name("ensemble"), "2"): {
            TEST_SPLIT_TAG: "aaa",
            MEMBERS_TAG: json.dumps({"cnn": "1", "mobilenetv2": "2"}),
        },
        (registered_name("mobilenetv2"), "2"): {TEST_SPLIT_TAG: "bbb"},
    }
    pinned = pinned_versions({"cnn": "1", "ensemble": "2"}, tag_table(tags))
    assert [(p.model, p.version, p.member_of) for p in pinned] == [
        ("cnn", "1", None),
        ("ensemble", "2", None),
        ("cnn", "1", "ensemble"),
        ("mobilenetv2", "2", "ensemble"),
    ]
    mismatches = split_mismatches("aaa", pinned)
    assert len(mismatches) == 1 and mismatches[0].startswith("mobilenetv2 v2 (member of ensemble)")
    assert split_mismatches("aaa", pinned[:3]) == []
    missing = pinned_versions({"cnn": "1"}, tag_table({(registered_name("cnn"), "1"): {}}))
    assert "missing" in split_mismatches("aaa", missing)[0]


@pytest.fixture
def own_mlflow(tmp_path: Path) -> Iterator[ManagedProcess]:
    """An MLflow server of this test's own: the probe version it registers stays out of the shared registry."""
    server = start_mlflow(tmp_path / "store", free_port(), tmp_path / "mlflow.log")
    yield server
    server.stop()


def test_tags_are_read_from_mlflow(own_mlflow: ManagedProcess) -> None:
    from mlflow import MlflowClient

    name = registered_name("split-probe")
    client = MlflowClient(tracking_uri=own_mlflow.url, registry_uri=own_mlflow.url)
    client.create_registered_model(name)
    tags = {TEST_SPLIT_TAG: "e3e319d3"}
    version = client.create_model_version(name, source="s3://nowhere/split-probe", tags=tags).version
    pinned = pinned_versions({"split-probe": str(version)}, mlflow_tags(own_mlflow.url, mlflow_auth_from_env()))
    assert pinned[0].split_sha256 == "e3e319d3"
    assert split_mismatches("e3e319d3", pinned) == []
