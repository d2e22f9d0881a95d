"""The model registry: MLflow names, versions and aliases to loaded ``OnnxClassifier`` objects.

Keyed by ``name/version``. Each version's ONNX file is downloaded once into the cache folder
and opened once; every request for that version shares the one onnxruntime session.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from shared.contract import ONNX_FILENAME
from shared.errors import ErrorCode, ServiceError
from shared.onnx_classifier import OnnxClassifier
from shared.schemas import MODEL_FAMILIES, REGISTERED_NAME_PREFIX, ModelInfo, ModelsOut, ModelVersionInfo

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "champion"
LATEST = "latest"
_FINISHED_RUN_STATES = frozenset({"FINISHED", "FAILED", "KILLED"})


def configure_mlflow_http(timeout_s: float, max_retries: int) -> None:
    """Bound MLflow's HTTP calls; its defaults retry with back-off for minutes when the server is down.

    MLflow reads these from the environment on every request, so this is the only knob it offers.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass(frozen=True)
class VersionRecord:
    """One registered version as MLflow describes it."""

    version: str
    run_id: str | None
    source: str
    created_at: str | None


@dataclass(frozen=True)
class ModelRecord:
    """One registered model with its versions and aliases (alias -> version)."""

    short_name: str
    registered_name: str
    versions: dict[str, VersionRecord]
    aliases: dict[str, str]

    def version_numbers(self) -> list[str]:
        """Versions, newest first."""
        return sorted(self.versions, key=_version_sort_key, reverse=True)

    def default_version(self) -> str | None:
        """The ``champion`` alias when set, otherwise the latest version."""
        champion = self.aliases.get(DEFAULT_ALIAS)
        if champion in self.versions:
            return champion
        numbers = self.version_numbers()
        return numbers[0] if numbers else None

    def resolve(self, spec: str | None) -> str | None:
        """A version number, an alias, ``latest`` or nothing (the default) to a version number."""
        if spec is None or not spec.strip():
            return self.default_version()
        spec = spec.strip()
        if spec.isdigit():
            number = str(int(spec))
            return number if number in self.versions else None
        if spec == LATEST:
            numbers = self.version_numbers()
            return numbers[0] if numbers else None
        target = self.aliases.get(spec)
        return target if target in self.versions else None

    def describe_available(self) -> str:
        numbers = ", ".join(self.version_numbers()) or "none"
        aliases = ", ".join(f"{alias} -> {version}" for alias, version in sorted(self.aliases.items()))
        return f"Available versions: {numbers}" + (f"; aliases: {aliases}." if aliases else ".")


@dataclass(frozen=True)
class Catalog:
    """A snapshot of the registry's models, taken at ``fetched_at`` (monotonic seconds)."""

    models: dict[str, ModelRecord]
    fetched_at: float = field(default_factory=time.monotonic)

    def names(self) -> list[str]:
        """Short names, the four known families first."""
        known = [name for name in MODEL_FAMILIES if name in self.models]
        return known + sorted(name for name in self.models if name not in MODEL_FAMILIES)


def _version_sort_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _iso_millis(timestamp_ms: int | None) -> str | None:
    if not timestamp_ms:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000.0, tz=UTC).isoformat(timespec="seconds")


def _find_onnx(downloaded: Path) -> Path:
    """The model file inside a downloaded artifact: the folder's model.onnx, or its only .onnx file."""
    if downloaded.is_file():
        return downloaded
    direct = downloaded / ONNX_FILENAME
    if direct.is_file():
        return direct
    candidates = sorted(downloaded.rglob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(f"expected {ONNX_FILENAME} in the artifact, found {[p.name for p in candidates]}")


class ModelRegistry:
    """Resolves ``(model, version-or-alias)`` through MLflow and keeps one classifier per version."""

    def __init__(
        self,
        tracking_uri: str,
        cache_dir: Path,
        *,
        intra_op_threads: int = 0,
        catalog_ttl_s: float = 5.0,
        metric_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.intra_op_threads = intra_op_threads
        self.catalog_ttl_s = catalog_ttl_s
        self.metric_prefixes = tuple(metric_prefixes)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._classifiers: dict[str, OnnxClassifier] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._run_metrics: dict[str, dict[str, float]] = {}

    # -- talking to MLflow -------------------------------------------------------------------

    @contextmanager
    def _mlflow(self, what: str, not_found: ServiceError | None = None) -> Iterator[None]:
        """Turn MLflow and network failures into REGISTRY_UNAVAILABLE, logged with the cause.

        ``not_found`` replaces MLflow's RESOURCE_DOES_NOT_EXIST, e.g. a version deleted meanwhile.
        """
        try:
            yield
        except ServiceError:
            raise
        except MlflowException as exc:
            if not_found is not None and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise not_found from exc
            raise self._unavailable(what, exc) from exc
        except (requests.RequestException, OSError) as exc:
            raise self._unavailable(what, exc) from exc

    def _unavailable(self, what: str, exc: Exception) -> ServiceError:
        logger.warning("MLflow at %s failed while %s: %s", self.tracking_uri, what, exc)
        return ServiceError(
            ErrorCode.REGISTRY_UNAVAILABLE,
            f"The model registry (MLflow) is unavailable or failed while {what}; try again shortly.",
        )

    def _fetch_catalog(self) -> Catalog:
        with self._mlflow("listing registered models"):
            pattern = f"name LIKE '{REGISTERED_NAME_PREFIX}%'"
            registered = []
            token: str | None = None
            while True:
                page = self._client.search_registered_models(filter_string=pattern, page_token=token)
                registered.extend(page)
                token = page.token
                if not token:
                    break
            versions: dict[str, dict[str, VersionRecord]] = {m.name: {} for m in registered}
            token = None
            while True:
                page = self._client.search_model_versions(filter_string=pattern, page_token=token)
                for mv in page:
                    if mv.name in versions and (mv.status or "READY") == "READY":
                        versions[mv.name][str(mv.version)] = VersionRecord(
                            version=str(mv.version),
                            run_id=mv.run_id or None,
                            source=mv.source or "",
                            created_at=_iso_millis(mv.creation_timestamp),
                        )
                token = page.token
                if not token:
                    break
        models = {}
        for rm in registered:
            short = rm.name[len(REGISTERED_NAME_PREFIX) :]
            aliases = {str(alias): str(version) for alias, version in (rm.aliases or {}).items()}
            models[short] = ModelRecord(short, rm.name, versions[rm.name], aliases)
        return Catalog(models)

    def catalog(self, max_age_s: float | None = None, *, allow_stale: bool = True) -> Catalog:
        """The registry snapshot, refreshed when older than ``max_age_s`` (default: the TTL).

        When MLflow cannot be reached and ``allow_stale`` is set, the last snapshot is used so
        that versions already known keep answering; without any snapshot it is a 503.
        """
        max_age = self.catalog_ttl_s if max_age_s is None else max_age_s
        with self._lock:
            current = self._catalog
        if current is not None and time.monotonic() - current.fetched_at < max_age:
            return current
        try:
            fresh = self._fetch_catalog()
        except ServiceError:
            if allow_stale and current is not None:
                age = time.monotonic() - current.fetched_at
                logger.warning("MLflow unreachable; using the registry snapshot from %.0f s ago", age)
                return current
            raise
        with self._lock:
            self._catalog = fresh
        return fresh

    # -- resolution ----------------------------------------------------------------------------

    def resolve(self, model: str, version: str | None = None) -> tuple[ModelRecord, VersionRecord]:
        """Find a model and version, or raise MODEL_NOT_FOUND / VERSION_NOT_FOUND naming what exists."""
        catalog = self.catalog()
        record = catalog.models.get(model)
        number = record.resolve(version) if record else None
        if number is None:
            # A miss may only mean the snapshot predates a new registration: look once more.
            catalog = self.catalog(max_age_s=0)
            record = catalog.models.get(model)
            number = record.resolve(version) if record else None
        if record is None:
            available = catalog.names()
            listing = ", ".join(available) or "none registered yet"
            raise ServiceError(
                ErrorCode.MODEL_NOT_FOUND,
                f"Unknown model {model!r}. Available models: {listing}.",
                {"available_models": available},
            )
        if number is None:
            wanted = f"version or alias {version!r}" if version else "versions yet"
            raise ServiceError(
                ErrorCode.VERSION_NOT_FOUND,
                f"Model {model!r} has no {wanted}. {record.describe_available()}",
                {"available_versions": record.version_numbers(), "aliases": dict(record.aliases)},
            )
        return record, record.versions[number]

    # -- loading -------------------------------------------------------------------------------

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _cache_path(self, record: ModelRecord, version: VersionRecord) -> Path:
        # The source and run pin the content: a reset registry can reuse version numbers.
        digest = hashlib.sha256(f"{version.source}|{version.run_id}".encode()).hexdigest()[:12]
        return self.cache_dir / record.registered_name / f"v{version.version}-{digest}"

    def _download(self, record: ModelRecord, version: VersionRecord) -> Path:
        target = self._cache_path(record, version)
        model_file = target / ONNX_FILENAME
        if model_file.is_file():
            return model_file
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            gone = ServiceError(
                ErrorCode.VERSION_NOT_FOUND,
                f"Model {record.short_name!r} version {version.version} was removed from the registry.",
            )
            with self._mlflow(f"downloading {record.short_name} version {version.version}", not_found=gone):
                # Ask the registry where the version's files are, then fetch them from there: a
                # models:/ URI would be resolved against MLflow's global default, not our server.
                uri = self._client.get_model_version_download_uri(record.registered_name, version.version)
                downloaded = download_artifacts(
                    artifact_uri=uri, dst_path=str(staging / "artifact"), tracking_uri=self.tracking_uri
                )
            try:
                found = _find_onnx(Path(downloaded))
            except FileNotFoundError as exc:
                raise ServiceError(
                    ErrorCode.INVALID_MODEL,
                    f"Model {record.short_name}/{version.version} cannot be served: {exc}.",
                ) from exc
            ready = staging / "ready"
            ready.mkdir()
            os.replace(found, ready / ONNX_FILENAME)
            try:
                # Renaming the whole folder makes the cache entry appear complete or not at all.
                os.replace(ready, target)
            except OSError:
                if not model_file.is_file():
                    raise
            logger.info("downloaded %s into %s", uri, target)
            return model_file
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def get(self, model: str, version: str | None = None) -> OnnxClassifier:
        """The loaded classifier for a model and version spec, downloading and loading it once."""
        record, version_record = self.resolve(model, version)
        key = f"{record.short_name}/{version_record.version}"
        with self._lock:
            classifier = self._classifiers.get(key)
        if classifier is not None and classifier.ready:
            return classifier
        with self._key_lock(key):
            with self._lock:
                classifier = self._classifiers.get(key)
            if classifier is None:
                path = self._download(record, version_record)
                classifier = OnnxClassifier(record.short_name, version_record.version, path, self.intra_op_threads)
                with self._lock:
                    self._classifiers[key] = classifier
            classifier.load()
        return classifier

    def loaded(self) -> dict[str, bool]:
        """``name/version`` -> ready flag of every classifier created so far."""
        with self._lock:
            return {key: classifier.ready for key, classifier in sorted(self._classifiers.items())}

    def preload_defaults(self) -> None:
        """Load the default version of every registered model; failures are logged, not raised."""
        try:
            names = self.catalog().names()
        except ServiceError as exc:
            logger.warning("preload skipped: %s", exc.message)
            return
        for name in names:
            try:
                self.get(name)
            except ServiceError as exc:
                logger.warning("preload of %s failed: %s", name, exc.message)

    # -- listing -------------------------------------------------------------------------------

    def _metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        with self._lock:
            cached = self._run_metrics.get(run_id)
        if cached is not None:
            return cached
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

    def list_models(self) -> ModelsOut:
        """Every registered model with versions (newest first), aliases, metrics and default version."""
        catalog = self.catalog(max_age_s=0, allow_stale=False)
        models = []
        with self._mlflow("reading run metrics"):
            for name in catalog.names():
                record = catalog.models[name]
                by_version: dict[str, list[str]] = {}
                for alias, number in sorted(record.aliases.items()):
                    by_version.setdefault(number, []).append(alias)
                versions = [
                    ModelVersionInfo(
                        version=number,
                        aliases=by_version.get(number, []),
                        run_id=record.versions[number].run_id,
                        created_at=record.versions[number].created_at,
                        metrics=self._metrics(record.versions[number].run_id),
                    )
                    for number in record.version_numbers()
                ]
                models.append(
                    ModelInfo(
                        model=name,
                        registered_name=record.registered_name,
                        default_version=record.default_version(),
                        versions=versions,
                    )
                )
        return ModelsOut(models=models)

    def ping(self) -> None:
        """Raise REGISTRY_UNAVAILABLE unless MLflow answers now (or answered within the TTL)."""
        self.catalog(allow_stale=False)
