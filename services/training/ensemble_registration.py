"""The ensemble's spec (members {family: version} and weights) as a logged file and a registered version of
``brain-tumor-ensemble``, through the one registration path (``registration``): its sha256 checked like a model's
file. Members and weights are also version tags: inference reads them (``services/inference/ensemble.py``).
Imports MLflow only, so the pretrained bundle registers its ensemble from the serving install too."""

from __future__ import annotations

import json
from typing import Any

import mlflow

from services.training import registration, tracking
from services.training.registration import LoggedFile, standing_on_test_split
from shared.kit.schemas import ENSEMBLE_MEMBERS_TAG, ENSEMBLE_MODEL, ENSEMBLE_WEIGHTS_TAG, registered_name

SPEC_FOLDER = "ensemble"
SPEC_ARTIFACT = f"{SPEC_FOLDER}/ensemble.json"


def log_spec(spec: dict[str, Any]) -> bytes:
    """Log the spec in the active run; returns the bytes logged (what registration checks)."""
    data = json.dumps(spec, indent=2, sort_keys=True).encode()
    tracking.log_bytes(data, SPEC_ARTIFACT)
    return data


def register_spec(
    spec_bytes: bytes, spec: dict[str, Any], split_sha256: str, run_id: str, description: str, tags: dict[str, str]
) -> str:
    """A new version of brain-tumor-ensemble from the active run's logged spec; ``champion`` is the caller's."""
    root = mlflow.get_artifact_uri()
    members = spec["members"]
    return registration.register(
        registered_name(ENSEMBLE_MODEL),
        LoggedFile(f"{root}/{SPEC_FOLDER}", f"{root}/{SPEC_ARTIFACT}", run_id),
        spec_bytes,
        description=f"ensemble of {members}: {description}",
        tags={
            "family": ENSEMBLE_MODEL,
            ENSEMBLE_MEMBERS_TAG: json.dumps(members, sort_keys=True),
            ENSEMBLE_WEIGHTS_TAG: json.dumps(spec["weights"], sort_keys=True),
            **{f"member_{family}": version for family, version in members.items()},
            **tags,
        },
        standing=standing_on_test_split(split_sha256, {}),
    )
