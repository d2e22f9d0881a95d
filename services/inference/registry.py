"""The model registry: MLflow names, versions and aliases to loaded ``OnnxClassifier`` objects.

Keyed by ``name/version``. Each version's ONNX file is downloaded once into the cache folder
(``mlflow_store``), checked against its sha256 and opened once; every request for that version shares the
one onnxruntime session. Each load and each failed load is counted (``MODEL_LOADS``, by model and version).
Which version a request means is the catalogue's rule (``catalog``).

MLflow being down or hung never holds a request that the registry can answer from what it has: an expired
catalogue is refreshed in the background while requests keep the snapshot, the last catalogue is kept on
disk for a restart (``model_store``), and a circuit breaker (``circuit``) stops calls to MLflow after a
failure until a background probe, at most every ``registry_retry_s``, gets through again.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from services.inference import model_store
from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from services.inference.circuit import CircuitBreaker
from services.inference.ensemble import EnsembleClassifier, EnsembleSpec, load_ensemble, read_spec
from services.inference.metrics import MODEL_LOADS, run_recorder
from services.inference.mlflow_store import MlflowStore
from shared.errors import ErrorCode, ServiceError
from shared.onnx_classifier import OnnxClassifier
from shared.schemas import ENSEMBLE_MODEL, ModelInfo, ModelsOut, ModelVersionInfo

logger = logging.getLogger(__name__)


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
        registry_retry_s: float = 5.0,
    ) -> None:
        self.breaker = CircuitBreaker(registry_retry_s)
        self.store = MlflowStore(tracking_uri, cache_dir, metric_prefixes, self.breaker)
        self.intra_op_threads = intra_op_threads
        self.catalog_ttl_s = catalog_ttl_s
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshing = False  # a background refresh is running
        # The catalogue MLflow last answered, kept on disk: until MLflow answers, it is what is served.
        self._catalog: Catalog | None = model_store.load_catalog(self.cache_dir, tracking_uri)
        self._classifiers: dict[str, OnnxClassifier] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        # name/version -> (monotonic time, error) of its last failed load, replayed for registry_retry_s
        # instead of downloading a bad file again on every request.
        self._load_failures: dict[str, tuple[float, ServiceError]] = {}

    @property
    def cache_dir(self) -> Path:
        return self.store.cache_dir

    def catalog(self, max_age_s: float | None = None, *, allow_stale: bool = True) -> Catalog:
        """The registry snapshot, refreshed when older than ``max_age_s`` (default: the TTL).

        An expired snapshot is returned at once while one background refresh asks MLflow (so no request
        waits on a slow or hung MLflow), and so is any snapshot while MLflow is unreachable. MLflow is asked
        in the request only when the snapshot was only read from disk, when ``max_age_s`` or
        ``allow_stale=False`` asks for its answer, or when there is no snapshot at all (then a 503 if it fails).
        """
        max_age = self.catalog_ttl_s if max_age_s is None else max_age_s
        with self._lock:
            current = self._catalog
        if current is not None and not current.from_disk and current.age_s() < max_age:
            return current
        if current is not None and allow_stale:
            background = max_age_s is None and not current.from_disk
            if background or self.breaker.is_open:
                self._refresh_in_background()
                return current
        return self._refresh_now(current, max_age, allow_stale)

    def _refresh_now(self, current: Catalog | None, max_age: float, allow_stale: bool) -> Catalog:
        """Ask MLflow in this request, one at a time; while it is unreachable only the due probe does."""
        with self._refresh_lock:
            with self._lock:
                latest = self._catalog
            if latest is not None and latest is not current and not latest.from_disk and latest.age_s() < max_age:
                return latest  # refreshed by another request while this one waited for its turn
            try:
                fresh = self.store.fetch_catalog(probe=self.breaker.try_probe())
            except ServiceError:
                if allow_stale and latest is not None:
                    logger.warning("MLflow unreachable; serving the last registry snapshot")
                    return latest
                raise
            self._install(fresh)
            return fresh

    def _refresh_in_background(self) -> None:
        """Start one refresh thread unless one runs or, MLflow being down, the last try is too recent."""
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        if not self.breaker.try_probe():
            with self._lock:
                self._refreshing = False
            return
        threading.Thread(target=self._refresh_background, name="catalog-refresh", daemon=True).start()

    def _refresh_background(self) -> None:
        try:
            self._install(self.store.fetch_catalog(probe=True))
        except ServiceError as exc:
            logger.warning("catalogue refresh failed, serving the last snapshot: %s", exc.message)
        except Exception:  # a background thread has nobody to raise to
            logger.exception("catalogue refresh failed")
        finally:
            with self._lock:
                self._refreshing = False

    def _install(self, fresh: Catalog) -> None:
        """Make ``fresh`` the snapshot, and keep it on disk when it differs from the last one."""
        with self._lock:
            previous, self._catalog = self._catalog, fresh
        if previous is None or previous.to_json() != fresh.to_json():
            model_store.save_catalog(self.cache_dir, fresh, self.store.tracking_uri)

    def resolve(self, model: str, version: str | None = None) -> tuple[ModelRecord, VersionRecord]:
        """Find a model and version, or raise MODEL_NOT_FOUND / VERSION_NOT_FOUND naming what exists."""
        catalog = self.catalog()
        if not catalog.has(model, version):
            # A miss may only mean the snapshot predates a new registration: look once more.
            catalog = self.catalog(max_age_s=0)
        return catalog.resolve(model, version)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def get(self, model: str, version: str | None = None) -> OnnxClassifier:
        """The loaded classifier for a model and version spec, downloading and loading it once."""
        record, version_record = self.resolve(model, version)
        key = f"{record.short_name}/{version_record.version}"
        with self._lock:
            classifier = self._classifiers.get(key)
        if classifier is not None and classifier.ready:
            return classifier
        with self._key_lock(key):
            return self._load(key, record, version_record)

    def _load(self, key: str, record: ModelRecord, version_record: VersionRecord) -> OnnxClassifier:
        """Download, verify and open one version (under its key lock), counting each real load and each failure.

        The file is checked against its sha256 right before onnxruntime opens it (``MlflowStore.download``).
        A failed load is remembered for ``registry_retry_s`` and its error replayed meanwhile.
        """
        with self._lock:
            classifier = self._classifiers.get(key)
            failed = self._load_failures.get(key)
        if classifier is not None and classifier.ready:  # loaded while this request waited for the lock
            return classifier
        if failed is not None and time.monotonic() - failed[0] < self.breaker.retry_interval_s:
            raise failed[1]
        model, version = record.short_name, version_record.version
        try:
            if model == ENSEMBLE_MODEL:  # no file of its own: its pinned members, loaded (or reused) here
                classifier = self._load_ensemble(record, version_record)
                with self._lock:
                    self._classifiers[key] = classifier
                return classifier
            path = self.store.download(record, version_record)
            # Every onnxruntime run of this version, whichever route asks for it, is recorded.
            classifier = OnnxClassifier(
                model, version, path, self.intra_op_threads, on_run=run_recorder(model, version)
            )
            classifier.load()
        except Exception as exc:
            MODEL_LOADS.labels(model, version, "failed").inc()
            # An unreachable registry is the breaker's to remember; anything else (a file that fails its
            # check, a model onnxruntime refuses) would fail the same way again at once.
            if isinstance(exc, ServiceError) and exc.code is not ErrorCode.REGISTRY_UNAVAILABLE:
                with self._lock:
                    self._load_failures[key] = (time.monotonic(), exc)
            raise
        with self._lock:
            self._classifiers[key] = classifier
            self._load_failures.pop(key, None)
        MODEL_LOADS.labels(model, version, "ok").inc()
        return classifier

    def ensemble_spec(self, record: ModelRecord, version_record: VersionRecord) -> EnsembleSpec:
        """An ensemble version's members and weights (its registration tags, kept in the cache folder)."""
        return read_spec(
            self.store._client, self.store._guard, self.cache_dir, record.registered_name,
            version_record.version, version_record.run_id,
        )  # fmt: skip

    def _load_ensemble(self, record: ModelRecord, version_record: VersionRecord) -> EnsembleClassifier:
        spec = self.ensemble_spec(record, version_record)
        return load_ensemble(record.short_name, version_record.version, spec, self.get)

    def loaded(self) -> dict[str, bool]:
        """``name/version`` -> ready flag of every version loaded so far (False: its last load failed)."""
        with self._lock:
            states = {key: False for key in self._load_failures}
            states.update({key: classifier.ready for key, classifier in self._classifiers.items()})
        return dict(sorted(states.items()))

    def preload_defaults(self) -> None:
        """Load the default version of every registered model; failures are logged, not raised."""
        try:
            names = self.catalog().defaults()
        except ServiceError as exc:
            logger.warning("preload skipped: %s", exc.message)
            return
        for name in names:
            try:
                self.get(name)
            except ServiceError as exc:
                logger.warning("preload of %s failed: %s", name, exc.message)

    def list_models(self) -> ModelsOut:
        """Every registered model with versions (newest first), aliases, metrics and default version.

        MLflow's current answer when it answers; while it is unreachable, the last catalogue, with the
        metrics of the runs read before (the others are left out).
        """
        catalog = self.catalog(max_age_s=0)
        return ModelsOut(models=[self._describe(catalog.models[name]) for name in catalog.names()])

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        try:
            return self.store.run_metrics(run_id)
        except ServiceError as exc:
            if exc.code is not ErrorCode.REGISTRY_UNAVAILABLE:
                raise
            return {}

    def _describe(self, record: ModelRecord) -> ModelInfo:
        aliases = record.aliases_by_version()
        versions = [
            ModelVersionInfo(
                version=number,
                aliases=aliases.get(number, []),
                run_id=record.versions[number].run_id,
                created_at=record.versions[number].created_at,
                metrics=self._run_metrics(record.versions[number].run_id),
                pretrained_on=record.versions[number].pretrained_on,
                **self._ensemble_fields(record, record.versions[number]),
            )
            for number in record.version_numbers()
        ]
        return ModelInfo(
            model=record.short_name,
            registered_name=record.registered_name,
            default_version=record.default_version(),
            versions=versions,
        )

    def _ensemble_fields(self, record: ModelRecord, version_record: VersionRecord) -> dict[str, dict]:
        """An ensemble version's members and weights for the listing; nothing when unreadable (logged)."""
        if record.short_name != ENSEMBLE_MODEL:
            return {}
        try:
            spec = self.ensemble_spec(record, version_record)
        except ServiceError as exc:
            logger.warning("ensemble/%s listed without its members: %s", version_record.version, exc.message)
            return {}
        return {"members": spec.members, "weights": spec.weights}

    def ping(self) -> None:
        """Raise REGISTRY_UNAVAILABLE unless MLflow answers now (or answered within the TTL)."""
        self.catalog(allow_stale=False)

    def readiness(self, *, require_defaults: bool = True) -> str:
        """The registry's state (``reachable`` or ``unreachable since <time>``) once the default version of
        every model is loaded (with ``require_defaults``); otherwise MODEL_NOT_READY naming those that cannot
        be, or REGISTRY_UNAVAILABLE when there is no catalogue at all (MLflow never answered and none was kept
        on disk).

        Never waits on a hung MLflow once it is known to be unreachable: what is loaded answers at once,
        and what is not is loaded now or fails fast.
        """
        catalog = self.catalog()
        failures = {}
        for name in catalog.defaults() if require_defaults else []:
            try:
                self.get(name)
            except ServiceError as exc:
                failures[name] = exc.message
        if failures:
            listing = "; ".join(f"{name}: {message}" for name, message in failures.items())
            raise ServiceError(
                ErrorCode.MODEL_NOT_READY,
                f"The default version of {', '.join(failures)} cannot be loaded. {listing}",
                {"models": sorted(failures)},
            )
        return self.breaker.describe()
