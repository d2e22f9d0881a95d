"""The one way training registers anything (a family's ONNX model, the ensemble's spec, the guard) and the one
rule that moves ``champion`` (the promotion gate).

Registering (``register``) is all or nothing as far as MLflow allows: the logged file is downloaded back and
compared with the sha256 of the bytes that were checked, the registered model is created if new, then the
version with every tag in one call. On a failure what this call created is deleted again (when MLflow still
answers) and the error is REGISTRY_UNAVAILABLE (MLflow failed) or INVALID_MODEL (the stored file differs).

Promoting (``promote``): ``champion`` moves to a new version only when the caller asks for it explicitly, when
the model has no champion yet, or when the new version beats the champion on the same evaluation: the same test
split (``test_files_sha256``) for a classifier, the same training images for the guard, compared on one figure
(``Standing``). Otherwise the version stays registered without the alias and the outcome says why: a
demonstration run on the sample never replaces a model evaluated on the full data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from services.training.options import Registration
from shared.core.contract import ONNX_FILENAME
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import BEST_ALIAS, CHAMPION_ALIAS

logger = logging.getLogger(__name__)

# Model-version tag holding the sha256 of the registered file, so a download can be checked against it.
ONNX_SHA256_TAG = "onnx_sha256"
# Which test split a classifier's figures were measured on (a hash of its file names).
TEST_SPLIT_TAG = "test_files_sha256"


@dataclass(frozen=True)
class LoggedFile:
    """What a version is made from: the MLflow source it points at, and the one file in it whose bytes were
    checked (an MLflow Model's ONNX file, the ensemble's spec)."""

    source: str
    file_uri: str
    run_id: str
    model_id: str | None = None

    @classmethod
    def of_model(cls, model: ModelInfo) -> LoggedFile:
        data = (model.flavors.get("onnx") or {}).get("data", ONNX_FILENAME)
        return cls(model.model_uri, f"{model.artifact_path}/{data}", model.run_id, model.model_id)


@dataclass(frozen=True)
class Standing:
    """What a version is compared on: one figure (a metric of its run) on one evaluation (a version tag)."""

    evaluated_on_tag: str
    evaluated_on: str
    metric: str
    value: float | None  # None: no figure of its own (a refit on every image)
    higher_is_better: bool = True
    ties_promote: bool = False  # the guard: a false-refusal rate "no worse" is enough


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Step:
    """Which step of a registration is running, for the error message when MLflow fails during it."""

    def __init__(self, what: str) -> None:
        self.what = what


@contextlib.contextmanager
def mlflow_failures(subject: str, step: _Step, consequence: str) -> Iterator[None]:
    """MLflow or network failures -> REGISTRY_UNAVAILABLE naming the subject, the step and what it left."""
    try:
        yield
    except ServiceError:
        raise
    except (MlflowException, requests.RequestException, OSError) as exc:
        raise ServiceError(
            ErrorCode.REGISTRY_UNAVAILABLE,
            f"MLflow failed while {step.what} for {subject} ({type(exc).__name__}); {consequence}",
        ) from exc


def register(
    registered_name: str,
    logged: LoggedFile,
    file_bytes: bytes,
    description: str,
    tags: dict[str, str],
    standing: Standing | None = None,
) -> str:
    """A new version of registered_name from a logged file whose bytes are ``file_bytes``; returns the version.
    Its tags: ``tags``, the file's sha256 and, with a standing, what it was evaluated on."""
    client = MlflowClient()
    sha256 = sha256_of(file_bytes)
    all_tags = {**tags, ONNX_SHA256_TAG: sha256}
    if standing is not None:
        all_tags[standing.evaluated_on_tag] = standing.evaluated_on
    step = _Step("checking the logged file")
    created_model = False
    version: ModelVersion | None = None
    try:
        with mlflow_failures(registered_name, step, "no version was registered."):
            _check_logged_file(logged.file_uri, sha256, registered_name)
            step.what = "creating the registered model"
            created_model = _create_registered_model(client, registered_name)
            step.what = "creating the version"
            version = client.create_model_version(
                registered_name, source=logged.source, run_id=logged.run_id, description=description,
                tags=all_tags, model_id=logged.model_id,
            )  # fmt: skip
        return str(version.version)
    except BaseException:
        _undo_registration(client, registered_name, created_model, version)
        raise


def _check_logged_file(file_uri: str, sha256: str, registered_name: str) -> None:
    """Download the logged file back and compare it with the bytes that were checked."""
    with tempfile.TemporaryDirectory() as folder:
        path = download_artifacts(artifact_uri=file_uri, dst_path=folder)
        stored = sha256_of(Path(path).read_bytes())
    if stored != sha256:
        raise ServiceError(
            ErrorCode.INVALID_MODEL,
            f"The file MLflow stored for {registered_name} is not the one that was checked "
            f"(sha256 {stored[:12]}..., expected {sha256[:12]}...); no version was registered.",
        )


def _create_registered_model(client: MlflowClient, registered_name: str) -> bool:
    """Create the registered model unless it exists; True when this call created it."""
    try:
        client.create_registered_model(registered_name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
        return False
    return True


def _undo_registration(
    client: MlflowClient, registered_name: str, created_model: bool, version: ModelVersion | None
) -> None:
    """Delete what a failed registration created; when MLflow is down that fails too and is only logged
    (a registered model without versions serves nothing and is reused by the next run)."""
    try:
        if version is not None:
            client.delete_model_version(registered_name, version.version)
        if created_model:
            client.delete_registered_model(registered_name)
    except (MlflowException, requests.RequestException, OSError) as exc:
        logger.warning("could not undo the failed registration of %s: %s", registered_name, exc)


def promote(registered_name: str, version: str, standing: Standing | None, explicit: bool = False) -> Registration:
    """Move ``champion`` to the version when the gate allows it (module docstring); says what it did and why."""
    client = MlflowClient()
    moved, reason = _gate(client, registered_name, standing, explicit)
    if moved:
        client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, version)
    return Registration(registered_name=registered_name, version=version, champion=moved, reason=reason)


def _gate(client: MlflowClient, name: str, standing: Standing | None, explicit: bool) -> tuple[bool, str]:
    if explicit:
        return True, "promoted on request"
    champion = _champion(client, name)
    if champion is None:
        return True, "the first version: no champion to compare with"
    held = f"champion stays version {champion.version}"
    if standing is None or standing.value is None:
        return False, f"{held}: this version has no test figure of its own (ask for the promotion explicitly)"
    if champion.tags.get(standing.evaluated_on_tag) != standing.evaluated_on:
        return False, (
            f"{held}: it was evaluated on other images ({standing.evaluated_on_tag} differs), so the two are not "
            "comparable (ask for the promotion explicitly)"
        )
    theirs = _run_metric(client, champion.run_id, standing.metric)
    ours = standing.value
    if theirs is None:
        return False, f"{held}: it has no {standing.metric} to compare with (ask for the promotion explicitly)"
    better = ours > theirs if standing.higher_is_better else ours < theirs
    if better or (standing.ties_promote and ours == theirs):
        return True, f"{standing.metric} {ours:.4f} against the champion's {theirs:.4f} (version {champion.version})"
    return False, f"{held}: {standing.metric} {ours:.4f} does not beat its {theirs:.4f} on the same images"


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.get_http_status_code() >= 500:
            raise
        return None


def _run_metric(client: MlflowClient, run_id: str | None, metric: str) -> float | None:
    if not run_id:
        return None
    value = client.get_run(run_id).data.metrics.get(metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Candidate:
    """A version just registered, and what the gate compares it on."""

    registered_name: str
    version: str
    standing: Standing | None


def standing_on_test_split(split_sha256: str, metrics: dict[str, float]) -> Standing:
    """A classifier's standing: its test accuracy on the run's test split (none for a refit without one)."""
    accuracy = metrics.get("test_accuracy")
    return Standing(TEST_SPLIT_TAG, split_sha256, "test_accuracy", None if accuracy is None else float(accuracy))


def promote_run(candidates: list[Candidate], explicit: bool, best_of: Sequence[Candidate] = ()) -> list[Registration]:
    """Every candidate through the gate once all are registered, so an alias only ever points at a complete
    version; then ``best`` to the best of ``best_of`` (the run's families). Each move is one MLflow call: when
    MLflow fails midway the moved aliases point at new versions, the others still at earlier ones, and the
    error is REGISTRY_UNAVAILABLE saying so."""
    step = _Step("moving the aliases")
    consequence = (
        "every registered version is complete; aliases not moved yet still point at earlier versions. "
        "Set them again with MLflow, or train again, once MLflow is back."
    )
    with mlflow_failures(f"the run's {len(candidates)} models", step, consequence):
        outcomes = [promote(c.registered_name, c.version, c.standing, explicit) for c in candidates]
        _mark_best(list(best_of))
    return outcomes


def _mark_best(candidates: list[Candidate]) -> None:
    scored = [c for c in candidates if c.standing is not None and c.standing.value is not None]
    if not scored:
        return
    client = MlflowClient()
    best = max(scored, key=lambda c: float(c.standing.value))  # type: ignore[union-attr]
    # The winner first, then the alias leaves the others: a failure in between leaves two holders, never none.
    client.set_registered_model_alias(best.registered_name, BEST_ALIAS, best.version)
    for other in scored:
        if other.registered_name == best.registered_name:
            continue
        try:
            client.delete_registered_model_alias(other.registered_name, BEST_ALIAS)
        except MlflowException as exc:
            if exc.get_http_status_code() >= 500:  # MLflow failed; a 4xx: that model never held the alias
                raise
