"""The guard's ONNX file as an MLflow Model and a registered version of ``brain-tumor-guard``, through the one
registration path (``registration``), and what its promotion is judged on: its cross-validated false-refusal
rate over the same training images (no worse than the champion guard's)."""

from __future__ import annotations

import json

import mlflow
import mlflow.onnx
import onnx

from services.training import registration
from services.training.registration import Candidate, LoggedFile, Standing
from shared.kit.schemas import GUARD_METADATA_KEY, GUARD_REGISTERED_NAME

# Version tag: which training images the guard's cross-validated figures were measured over.
GUARD_IMAGES_TAG = "guard_images_sha256"
# Run metric and metadata key: the share of real slices refused, estimated by cross-validation.
FALSE_REFUSAL_METRIC = "guard_false_refusal_cv"
FALSE_REFUSAL_METADATA = "false_refusal_cv"


def guard_metadata(model_bytes: bytes) -> dict[str, object]:
    proto = onnx.load_from_string(model_bytes)
    return json.loads({prop.key: prop.value for prop in proto.metadata_props}[GUARD_METADATA_KEY])


def guard_standing(metadata: dict[str, object], images_sha256: str) -> Standing:
    """Lower is better, and a tie promotes: a guard refusing no more real slices than the champion may replace it."""
    rate = metadata.get(FALSE_REFUSAL_METADATA)
    return Standing(
        GUARD_IMAGES_TAG, images_sha256, FALSE_REFUSAL_METRIC, None if rate is None else float(rate),  # type: ignore[arg-type]
        higher_is_better=False, ties_promote=True,
    )  # fmt: skip


def register_guard_file(
    model_bytes: bytes, description: str, tags: dict[str, str], images_sha256: str = ""
) -> Candidate:
    """Log a guard's ONNX file (a fitted one, or the pretrained bundle's) as an MLflow Model of the active run and
    register it, threshold and input kind tags from its metadata; ``champion`` is the caller's (``promote``)."""
    metadata = guard_metadata(model_bytes)
    standing = guard_standing(metadata, images_sha256)
    if standing.value is not None:
        mlflow.log_metric(FALSE_REFUSAL_METRIC, standing.value)
    logged = mlflow.onnx.log_model(
        onnx.load_from_string(model_bytes),
        name="guard",
        metadata={GUARD_METADATA_KEY: metadata},
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,
    )
    version = registration.register(
        GUARD_REGISTERED_NAME,
        LoggedFile.of_model(logged),
        model_bytes,
        description=description,
        tags={"family": "guard", "threshold": f"{float(metadata['threshold']):.6f}",  # type: ignore[arg-type]
              "input_kind": str(metadata.get("input_kind", "")), **tags},
        standing=standing,
    )  # fmt: skip
    return Candidate(GUARD_REGISTERED_NAME, version, standing)
