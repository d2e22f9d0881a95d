"""The images the explanation-quality benchmark may use, and the check that the models never saw them.

The test split is recomputed exactly as training makes it (``services.training.data.prepare_data`` with its
test fraction and seed: duplicate groups, the stratified group split, ``_split_sha256``) and its hash compared
with the ``test_files_sha256`` tag of every version measured, and of every member an ensemble version pins.
Test images are used only when all of them match; training images (for choosing settings) need no check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from services.training.data import PreparedData, prepare_data
from services.training.registration import TEST_SPLIT_TAG
from shared.core.dataset import LabelledFiles
from shared.kit.schemas import ENSEMBLE_MODEL, registered_name

# What training uses by default (services/training/config.py): a fifth of the images, seed 42.
TEST_FRACTION = 0.2
SPLIT_SEED = 42
MEMBERS_TAG = "ensemble_members"

# (registered name, version) -> that version's tags
TagReader = Callable[[str, str], Mapping[str, str]]


@dataclass(frozen=True)
class PinnedVersion:
    """One model version a measurement depends on, and the test split it was evaluated on."""

    model: str
    version: str
    split_sha256: str | None
    member_of: str | None = None


def recompute_split(data_dir: Path, cache_dir: Path | None) -> PreparedData:
    """The train/test split exactly as a training run on ``data_dir`` makes it."""
    return prepare_data(data_dir, TEST_FRACTION, SPLIT_SEED, cache_dir)


def mlflow_tags(tracking_uri: str, auth: httpx.Auth | None) -> TagReader:
    """Reads a model version's tags from MLflow's REST API."""

    def read(name: str, version: str) -> Mapping[str, str]:
        response = httpx.get(
            f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/model-versions/get",
            params={"name": name, "version": version},
            auth=auth,
            timeout=30.0,
            trust_env=False,
        )
        response.raise_for_status()
        return {tag["key"]: tag["value"] for tag in response.json()["model_version"].get("tags", [])}

    return read


def pinned_versions(models: Mapping[str, str], tags: TagReader) -> list[PinnedVersion]:
    """Each model=version measured, and the members an ensemble version pins (tag ``ensemble_members``)."""
    pinned = []
    for model, version in models.items():
        own = tags(registered_name(model), version)
        pinned.append(PinnedVersion(model, version, own.get(TEST_SPLIT_TAG)))
        if model == ENSEMBLE_MODEL:
            for member, member_version in json.loads(own.get(MEMBERS_TAG, "{}")).items():
                member_tags = tags(registered_name(member), str(member_version))
                pinned.append(PinnedVersion(member, str(member_version), member_tags.get(TEST_SPLIT_TAG), model))
    return pinned


def split_mismatches(expected_sha256: str, pinned: list[PinnedVersion]) -> list[str]:
    """What differs from the recomputed split, one line per version (empty: every version matches)."""
    return [
        f"{p.model} v{p.version}{f' (member of {p.member_of})' if p.member_of else ''}: "
        f"{TEST_SPLIT_TAG} {p.split_sha256 or 'missing'}, the split recomputed here is {expected_sha256}"
        for p in pinned
        if p.split_sha256 != expected_sha256
    ]


def choose_images(files: LabelledFiles, class_names: tuple[str, ...], per_class: int, seed: int = 0) -> list[Path]:
    """``per_class`` files of every class, drawn at random with ``seed`` (fixed), in class then file order."""
    rng = np.random.default_rng(seed)
    chosen: list[Path] = []
    for index, _ in enumerate(class_names):
        members = np.flatnonzero(files.labels == index)
        if len(members) < per_class:
            raise ValueError(f"class {class_names[index]} has {len(members)} images, fewer than {per_class}")
        picked = np.sort(rng.choice(members, size=per_class, replace=False))
        chosen.extend(files.paths[i] for i in picked)
    return chosen
