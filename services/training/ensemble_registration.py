"""The ensemble's spec (members {family: version}, weights, its temperature and prediction sets) as a logged file
and a registered version of ``brain-tumor-ensemble``, through the one registration path (``registration``): its
sha256 checked like a model's file; inference serves the spec from that file, verified against its sha256
(``onnx_sha256``). Members, weights and sets are also version tags (``shared.core.ensemble_spec``), for people and
MLflow searches. Imports MLflow only, so the pretrained bundle registers its ensemble from the serving install too."""

from __future__ import annotations

import json
from typing import Any

import mlflow

from services.training import registration, tracking
from services.training.registration import LoggedFile, standing_on_test_split
from shared.core.ensemble_spec import EnsembleSpec
from shared.kit.schemas import ENSEMBLE_MODEL, registered_name

SPEC_FOLDER = "ensemble"
SPEC_ARTIFACT = f"{SPEC_FOLDER}/ensemble.json"


def log_spec(spec: EnsembleSpec, notes: dict[str, Any] | None = None) -> bytes:
    """Log the spec (and ``notes``: how the weights were chosen, the test split) in the active run; returns the
    bytes logged (what registration checks)."""
    conformal = None if spec.conformal is None else spec.conformal.model_dump()
    document = {"members": spec.members, "weights": spec.weights, "conformal": conformal,
                "temperature": spec.temperature, **(notes or {})}  # fmt: skip
    data = json.dumps(document, indent=2, sort_keys=True).encode()
    tracking.log_bytes(data, SPEC_ARTIFACT)
    return data


def register_spec(
    spec_bytes: bytes, spec: EnsembleSpec, split_sha256: str, run_id: str, description: str, tags: dict[str, str]
) -> str:
    """A new version of brain-tumor-ensemble from the active run's logged spec; ``champion`` is the caller's."""
    root = mlflow.get_artifact_uri()
    return registration.register(
        registered_name(ENSEMBLE_MODEL),
        LoggedFile(f"{root}/{SPEC_FOLDER}", f"{root}/{SPEC_ARTIFACT}", run_id),
        spec_bytes,
        description=f"ensemble of {spec.members}: {description}",
        tags={
            "family": ENSEMBLE_MODEL,
            **spec.to_tags(),
            **{f"member_{family}": version for family, version in spec.members.items()},
            **tags,
        },
        standing=standing_on_test_split(split_sha256, {}),
    )
