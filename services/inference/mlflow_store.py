"""Talking to MLflow: the catalogue of registered models, version downloads and run metrics.

A version is an MLflow Model folder (onnx flavor) or, registered before that, a bare folder with model.onnx;
either way only the ONNX file is kept and served.

Every MLflow or network failure becomes REGISTRY_UNAVAILABLE (503), with the cause in the log only:
internal addresses never reach a client. A circuit breaker (``circuit``) remembers the failure: until a
probe gets through again, calls fail at once instead of waiting for MLflow's timeout.

Each downloaded file is checked against the sha256 the registry holds for it before it lands in the
cache, and each cached file again before it is served (``model_store``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import requests
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException

from services.inference import model_store
from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from services.inference.circuit import CircuitBreaker
from shared.contract import ONNX_FILENAME
from shared.errors import ErrorCode, ServiceError
from shared.schemas import (
    CHAMPION_ALIAS,
    ENSEMBLE_MEMBERS_TAG,
    GUARD_REGISTERED_NAME,
    PRETRAINED_TAG,
    REGISTERED_NAME_PREFIX,
)

logger = logging.getLogger(__name__)

_FINISHED_RUN_STATES = frozenset({"FINISHED", "FAILED", "KILLED"})
_NAME_FILTER = f"name LIKE '{REGISTERED_NAME_PREFIX}%'"
_MLMODEL_FILENAME = "MLmodel"
_ONNX_FLAVOR = "onnx"
# The model-version tag training writes (services.training.tracking.ONNX_SHA256_TAG; no service imports another).
ONNX_SHA256_TAG = "onnx_sha256"


def configure_mlflow_http(timeout_s: float, max_retries: int) -> None:
    """Bound MLflow's HTTP calls; its defaults retry with back-off for minutes when the server is down.

    MLflow reads these from the environment on every request, so this is the only knob it offers.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _iso_millis(timestamp_ms: int | None) -> str | None:
    if not timestamp_ms:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000.0, tz=UTC).isoformat(timespec="seconds")


def _find_onnx(downloaded: Path) -> Path:
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


class MlflowStore:
    """The MLflow server behind the registry; downloaded versions are kept under ``cache_dir``."""

    def __init__(
        self,
        tracking_uri: str,
        cache_dir: Path,
        metric_prefixes: tuple[str, ...] = (),
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.metric_prefixes = tuple(metric_prefixes)
        self.breaker = breaker or CircuitBreaker(retry_interval_s=5.0)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._lock = threading.Lock()
        self._run_metrics: dict[str, dict[str, float]] = {}

    @contextmanager
    def _guard(self, what: str, not_found: ServiceError | None = None, *, probe: bool = False) -> Iterator[None]:
        """Turn MLflow and network failures into REGISTRY_UNAVAILABLE, logged with the cause, and tell the
        circuit breaker how the call went.

        While the breaker is open the call is not made at all (fast REGISTRY_UNAVAILABLE), unless it is a
        ``probe`` the caller claimed with ``breaker.try_probe()``. ``not_found`` replaces MLflow's
        RESOURCE_DOES_NOT_EXIST, e.g. a version deleted meanwhile.
        """
        if not probe and not self.breaker.allow():
            raise self._short_circuited(what)
        try:
            yield
        except ServiceError:
            self.breaker.success()  # raised by our own checks after MLflow answered
            raise
        except MlflowException as exc:
            if exc.get_http_status_code() < 500:  # MLflow answered, with a refusal: it is up
                self.breaker.success()
                if not_found is not None and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    raise not_found from exc
            else:
                self.breaker.failure()
            raise self._unavailable(what, exc) from exc
        except (requests.RequestException, OSError) as exc:
            self.breaker.failure()
            raise self._unavailable(what, exc) from exc
        except BaseException:
            self.breaker.failure()  # a probe must never leave the breaker waiting for its outcome
            raise
        else:
            self.breaker.success()

    def _unavailable(self, what: str, exc: Exception) -> ServiceError:
        logger.warning("MLflow at %s failed while %s: %s", self.tracking_uri, what, exc)
        return ServiceError(
            ErrorCode.REGISTRY_UNAVAILABLE,
            f"The model registry (MLflow) is unavailable or failed while {what}; try again shortly.",
        )

    def _short_circuited(self, what: str) -> ServiceError:
        return ServiceError(
            ErrorCode.REGISTRY_UNAVAILABLE,
            f"The model registry (MLflow) is unavailable or failed while {what} "
            f"({self.breaker.describe()}); try again shortly.",
            retry_after_s=max(1, round(self.breaker.retry_interval_s)),
        )

    # -- the catalogue ---------------------------------------------------------------------------

    def fetch_catalog(self, *, probe: bool = False) -> Catalog:
        """Every registered model of the project with its READY versions and its aliases.

        ``probe``: the caller holds the breaker's probe (see ``_guard``).
        """
        with self._guard("listing registered models", probe=probe):
            registered = self._all_registered_models()
            versions = self._ready_versions({model.name for model in registered})
        models = {}
        for model in registered:
            if model.name == GUARD_REGISTERED_NAME:  # the guard is not a classifier: services/inference/ood.py
                continue
            short = model.name[len(REGISTERED_NAME_PREFIX) :]
            aliases = {str(alias): str(version) for alias, version in (model.aliases or {}).items()}
            models[short] = ModelRecord(short, model.name, versions[model.name], aliases)
        return Catalog(models)

    def _all_registered_models(self) -> list[RegisteredModel]:
        registered: list[RegisteredModel] = []
        token: str | None = None
        while True:
            page = self._client.search_registered_models(filter_string=_NAME_FILTER, page_token=token)
            registered.extend(page)
            token = page.token
            if not token:
                return registered

    def _ready_versions(self, names: set[str]) -> dict[str, dict[str, VersionRecord]]:
        versions: dict[str, dict[str, VersionRecord]] = {name: {} for name in names}
        token: str | None = None
        while True:
            page = self._client.search_model_versions(filter_string=_NAME_FILTER, page_token=token)
            for mv in page:
                if mv.name in versions and (mv.status or "READY") == "READY":
                    versions[mv.name][str(mv.version)] = VersionRecord(
                        version=str(mv.version),
                        run_id=mv.run_id or None,
                        source=mv.source or "",
                        created_at=_iso_millis(mv.creation_timestamp),
                        onnx_sha256=(mv.tags or {}).get(ONNX_SHA256_TAG) or None,
                        kind="ensemble" if ENSEMBLE_MEMBERS_TAG in (mv.tags or {}) else "onnx",
                        pretrained_on=(mv.tags or {}).get(PRETRAINED_TAG) or None,
                    )
            token = page.token
            if not token:
                return versions

    def champion_version(self, registered_name: str) -> VersionRecord | None:
        """The version the ``champion`` alias of ``registered_name`` points at; None when the model or the
        alias does not exist (MLflow answered). MLflow failing is REGISTRY_UNAVAILABLE, as everywhere."""
        with self._guard(f"reading the champion of {registered_name}"):
            try:
                found = self._client.get_model_version_by_alias(registered_name, CHAMPION_ALIAS)
            except MlflowException as exc:
                # No such model, or no such alias on it (MLflow says "... not found" with either code).
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc):
                    return None
                raise
        tags = found.tags or {}
        return VersionRecord(
            version=str(found.version),
            run_id=found.run_id or None,
            source=found.source or "",
            created_at=_iso_millis(found.creation_timestamp),
            onnx_sha256=tags.get(ONNX_SHA256_TAG) or None,
        )

    # -- downloads -------------------------------------------------------------------------------

    def cache_path(self, record: ModelRecord, version: VersionRecord) -> Path:
        # The source and run pin the content: a reset registry can reuse version numbers.
        digest = hashlib.sha256(f"{version.source}|{version.run_id}".encode()).hexdigest()[:12]
        return self.cache_dir / record.registered_name / f"v{version.version}-{digest}"

    def download(self, record: ModelRecord, version: VersionRecord) -> Path:
        """The version's verified ONNX file in the cache, downloaded first unless a valid copy is there.

        A cached copy that fails its sha256 check is deleted and downloaded again; a download that fails
        it is INVALID_MODEL and never reaches the cache.
        """
        target = self.cache_path(record, version)
        model_file = target / ONNX_FILENAME
        label = f"{record.short_name}/{version.version}"
        if model_file.is_file() or target.exists():
            if model_store.cached_file_is_valid(model_file, version.onnx_sha256, label):
                return model_file
            shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            found = self._fetch_onnx(record, version, staging / "artifact")
            ready = staging / "ready"
            ready.mkdir()
            os.replace(found, ready / ONNX_FILENAME)
            self._verify_download(ready, version, label)
            try:
                # Renaming the whole folder makes the cache entry appear complete or not at all.
                os.replace(ready, target)
            except OSError:
                if not model_file.is_file():
                    raise
            logger.info("downloaded %s version %s into %s", record.registered_name, version.version, target)
            return model_file
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _verify_download(folder: Path, version: VersionRecord, label: str) -> None:
        """Check a fresh download against the registry's sha256 and record it beside the file.

        A version registered without the tag (before training wrote it) is trusted on this first download,
        with a warning; its sha256 is recorded so that every later load is held to it.
        """
        actual = model_store.file_sha256(folder / ONNX_FILENAME)
        if version.onnx_sha256 is None:
            logger.warning(
                "%s has no %s tag: its file (sha256 %s) is trusted as downloaded", label, ONNX_SHA256_TAG, actual
            )
            model_store.record_verified(folder, actual, model_store.TRUSTED_ON_DOWNLOAD)
            return
        if actual != version.onnx_sha256:
            logger.error("download of %s has sha256 %s, registered %s: discarded", label, actual, version.onnx_sha256)
            raise ServiceError(
                ErrorCode.INVALID_MODEL,
                f"Model {label} cannot be served: the file downloaded from the registry does not match the "
                "sha256 recorded when it was registered.",
            )
        model_store.record_verified(folder, actual, model_store.FROM_REGISTRY)

    def _fetch_onnx(self, record: ModelRecord, version: VersionRecord, destination: Path) -> Path:
        gone = ServiceError(
            ErrorCode.VERSION_NOT_FOUND,
            f"Model {record.short_name!r} version {version.version} was removed from the registry.",
        )
        with self._guard(f"downloading {record.short_name} version {version.version}", not_found=gone):
            # Ask the registry where the version's files are, then fetch them from there: a
            # models:/ URI would be resolved against MLflow's global default, not our server.
            uri = self._client.get_model_version_download_uri(record.registered_name, version.version)
            downloaded = download_artifacts(artifact_uri=uri, dst_path=str(destination), tracking_uri=self.tracking_uri)
        try:
            return _find_onnx(Path(downloaded))
        except FileNotFoundError as exc:
            raise ServiceError(
                ErrorCode.INVALID_MODEL,
                f"Model {record.short_name}/{version.version} cannot be served: {exc}.",
            ) from exc

    # -- run metrics -----------------------------------------------------------------------------

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        """The headline metrics (those matching ``metric_prefixes``) of the run that logged a version."""
        if not run_id:
            return {}
        with self._lock:
            cached = self._run_metrics.get(run_id)
        if cached is not None:
            return cached
        with self._guard("reading run metrics"):
            try:
                run = self._client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return {}  # the run was deleted; the version still serves
                raise
        metrics = {
            key: float(value)
            for key, value in sorted(run.data.metrics.items())
            if not self.metric_prefixes or key.startswith(self.metric_prefixes)
        }
        if run.info.status in _FINISHED_RUN_STATES:
            # A finished run's metrics no longer change; a running one is asked again next time.
            with self._lock:
                self._run_metrics[run_id] = metrics
        return metrics
