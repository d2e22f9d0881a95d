"""Talking to MLflow: the catalogue of registered models, version tags, downloads and run metrics.

Every MLflow or network failure becomes REGISTRY_UNAVAILABLE (503), with the cause in the log only:
internal addresses never reach a client. A circuit breaker (``circuit``) remembers the failure: until a
probe gets through again, calls fail at once instead of waiting for MLflow's timeout.

Each downloaded file is checked against the sha256 the registry holds for it before it lands in the
cache, and each cached file again before it is served (``model_store``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException

from services.inference import model_store
from services.inference.cache_trust import CacheSigner, cache_signer
from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from services.inference.circuit import CircuitBreaker
from services.inference.mlflow_records import SPEC_FILENAME, find_onnx, find_spec, version_record
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import (
    CHAMPION_ALIAS,
    GUARD_REGISTERED_NAME,
    REGISTERED_NAME_PREFIX,
)

logger = logging.getLogger(__name__)

_FINISHED_RUN_STATES = frozenset({"FINISHED", "FAILED", "KILLED"})
_NAME_FILTER = f"name LIKE '{REGISTERED_NAME_PREFIX}%'"


def configure_mlflow_http(timeout_s: float, max_retries: int) -> None:
    """Bound MLflow's HTTP calls; its defaults retry with back-off for minutes when the server is down.

    MLflow reads these from the environment on every request, so this is the only knob it offers.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlflowStore:
    """The MLflow server behind the registry; downloaded versions are kept under ``cache_dir``."""

    def __init__(
        self,
        tracking_uri: str,
        cache_dir: Path,
        metric_prefixes: tuple[str, ...] = (),
        breaker: CircuitBreaker | None = None,
        signer: CacheSigner | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        # Signs what the cache keeps about its files (cache_trust); without a key file, the MLflow password's key.
        self.signer = signer or cache_signer(None, self.cache_dir)
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
            if model.name == GUARD_REGISTERED_NAME:  # the guard is not a classifier: guard_selector.py
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
                    versions[mv.name][str(mv.version)] = version_record(mv)
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
        return version_record(found)

    # -- downloads -------------------------------------------------------------------------------

    def download(self, record: ModelRecord, version: VersionRecord) -> Path:
        """The version's verified ONNX file in the cache, downloaded first unless a valid copy is there."""
        fetch = functools.partial(self._fetch, record, version, find_onnx)
        return model_store.cached_download(self.cache_dir, record, version, fetch, self.signer)

    def download_spec(self, record: ModelRecord, version: VersionRecord) -> Path:
        """An ensemble version's verified spec file (the registered ``ensemble.json``, its sha256 in the version's
        ``onnx_sha256`` tag like a model file's) in the cache, downloaded first unless a valid copy is there."""
        fetch = functools.partial(self._fetch, record, version, find_spec)
        return model_store.cached_download(self.cache_dir, record, version, fetch, self.signer, SPEC_FILENAME)

    def _fetch(
        self, record: ModelRecord, version: VersionRecord, find: Callable[[Path], Path], destination: Path
    ) -> Path:
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
            return find(Path(downloaded))
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
            # An undefined metric (NaN, logged by older training code) has no JSON number: left out.
            if (not self.metric_prefixes or key.startswith(self.metric_prefixes)) and math.isfinite(value)
        }
        if run.info.status in _FINISHED_RUN_STATES:
            # A finished run's metrics no longer change; a running one is asked again next time.
            with self._lock:
                self._run_metrics[run_id] = metrics
        return metrics
