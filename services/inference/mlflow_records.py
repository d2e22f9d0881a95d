"""What MLflow's answers become: a registered version's record, and the ONNX file inside its artifact.

A version is an MLflow Model folder (onnx flavor) or, registered before that, a bare folder with model.onnx;
either way only the ONNX file is kept and served.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from mlflow.entities.model_registry import ModelVersion

from services.inference.catalog import VersionRecord
from shared.core.contract import ONNX_FILENAME
from shared.core.ensemble_spec import MEMBERS_TAG
from shared.kit.schemas import PRETRAINED_TAG

# The model-version tag training writes (services.training.tracking.ONNX_SHA256_TAG; no service imports another).
ONNX_SHA256_TAG = "onnx_sha256"

_MLMODEL_FILENAME = "MLmodel"
_ONNX_FLAVOR = "onnx"


# The file an ensemble version registers (services.training.ensemble_registration.SPEC_ARTIFACT's name).
SPEC_FILENAME = "ensemble.json"


def find_spec(downloaded: Path) -> Path:
    """An ensemble version's spec file inside its downloaded artifact (the registered ``ensemble/`` folder)."""
    if downloaded.is_file():
        return downloaded
    candidates = sorted(downloaded.rglob(SPEC_FILENAME))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(f"expected one {SPEC_FILENAME} in the artifact, found {len(candidates)}")


def find_onnx(downloaded: Path) -> Path:
    """The model file inside a downloaded artifact.

    An MLflow Model folder (what training registers) names it in its MLmodel file; a version registered
    in the older layout is a bare folder: its model.onnx, or its only .onnx file.
    """
    if downloaded.is_file():
        return downloaded
    if (downloaded / _MLMODEL_FILENAME).is_file():
        return _onnx_of_mlflow_model(downloaded)
    direct = downloaded / ONNX_FILENAME
    if direct.is_file():
        return direct
    candidates = sorted(downloaded.rglob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(f"expected {ONNX_FILENAME} in the artifact, found {[p.name for p in candidates]}")


def _onnx_of_mlflow_model(folder: Path) -> Path:
    """The file of an MLflow Model's onnx flavor, read from its MLmodel (no MLflow flavor code is imported:
    inference runs the file with its own onnxruntime session)."""
    try:
        description = yaml.safe_load((folder / _MLMODEL_FILENAME).read_text()) or {}
    except yaml.YAMLError as exc:
        raise FileNotFoundError(f"its {_MLMODEL_FILENAME} file is not valid YAML") from exc
    flavors = description.get("flavors") if isinstance(description, dict) else None
    flavors = flavors if isinstance(flavors, dict) else {}
    data = (flavors.get(_ONNX_FLAVOR) or {}).get("data")
    if not isinstance(data, str):
        raise FileNotFoundError(f"the MLflow Model has no {_ONNX_FLAVOR} flavor (its flavors: {sorted(flavors)})")
    path = (folder / data).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise FileNotFoundError(f"the MLflow Model's {_ONNX_FLAVOR} file {data!r} is not in the artifact")
    return path


def _iso_millis(timestamp_ms: int | None) -> str | None:
    if not timestamp_ms:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000.0, tz=UTC).isoformat(timespec="seconds")


def version_record(mv: ModelVersion) -> VersionRecord:
    tags = mv.tags or {}
    return VersionRecord(
        version=str(mv.version),
        run_id=mv.run_id or None,
        source=mv.source or "",
        created_at=_iso_millis(mv.creation_timestamp),
        onnx_sha256=tags.get(ONNX_SHA256_TAG) or None,
        kind="ensemble" if MEMBERS_TAG in tags else "onnx",
        pretrained_on=tags.get(PRETRAINED_TAG) or None,
    )
