"""The model registry: MLflow names, versions and aliases to loaded ``OnnxClassifier`` objects.

Keyed by ``name/version``. Each version's ONNX file is downloaded once into the cache folder
(``mlflow_store``) and opened once; every request for that version shares the one onnxruntime
session. Each load and each failed load is counted (``MODEL_LOADS``, by model and version).
Which version a request means is the catalogue's rule (``catalog``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from services.inference.metrics import MODEL_LOADS, run_recorder
from services.inference.mlflow_store import MlflowStore
from shared.errors import ServiceError
from shared.onnx_classifier import OnnxClassifier
from shared.schemas import ModelInfo, ModelsOut, ModelVersionInfo

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
    ) -> None:
        self.store = MlflowStore(tracking_uri, cache_dir, metric_prefixes)
        self.intra_op_threads = intra_op_threads
        self.catalog_ttl_s = catalog_ttl_s
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._classifiers: dict[str, OnnxClassifier] = {}
        self._key_locks: dict[str, threading.Lock] = {}

    @property
    def cache_dir(self) -> Path:
        return self.store.cache_dir

    def catalog(self, max_age_s: float | None = None, *, allow_stale: bool = True) -> Catalog:
        """The registry snapshot, refreshed when older than ``max_age_s`` (default: the TTL).

        When MLflow cannot be reached and ``allow_stale`` is set, the last snapshot is used so
        that versions already known keep answering; without any snapshot it is a 503.
        """
        max_age = self.catalog_ttl_s if max_age_s is None else max_age_s
        with self._lock:
            current = self._catalog
        if current is not None and current.age_s() < max_age:
            return current
        # One refresh at a time: while it runs, other requests keep the snapshot they have instead of
        # each asking MLflow again (under load they did, and waited on it).
        if current is not None and allow_stale and max_age_s is None:
            if not self._refresh_lock.acquire(blocking=False):
                return current
        else:
            self._refresh_lock.acquire()
        try:
            return self._refresh(current, max_age, allow_stale)
        finally:
            self._refresh_lock.release()

    def _refresh(self, current: Catalog | None, max_age: float, allow_stale: bool) -> Catalog:
        with self._lock:
            latest = self._catalog
        if latest is not None and latest is not current and latest.age_s() < max_age:
            return latest  # refreshed by another request while this one waited for its turn
        current = latest or current
        try:
            fresh = self.store.fetch_catalog()
        except ServiceError:
            if allow_stale and current is not None:
                logger.warning("MLflow unreachable; using the registry snapshot from %.0f s ago", current.age_s())
                return current
            raise
        with self._lock:
            self._catalog = fresh
        return fresh

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
        """Download and open one version (under its key lock), counting each real load and each failure."""
        with self._lock:
            classifier = self._classifiers.get(key)
        if classifier is not None and classifier.ready:  # loaded while this request waited for the lock
            return classifier
        model, version = record.short_name, version_record.version
        try:
            if classifier is None:
                path = self.store.download(record, version_record)
                # Every onnxruntime run of this version, whichever route asks for it, is recorded.
                recorder = run_recorder(model, version)
                classifier = OnnxClassifier(model, version, path, self.intra_op_threads, on_run=recorder)
                with self._lock:
                    self._classifiers[key] = classifier
            classifier.load()
        except Exception:
            MODEL_LOADS.labels(model, version, "failed").inc()
            raise
        MODEL_LOADS.labels(model, version, "ok").inc()
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

    def list_models(self) -> ModelsOut:
        """Every registered model with versions (newest first), aliases, metrics and default version."""
        catalog = self.catalog(max_age_s=0, allow_stale=False)
        return ModelsOut(models=[self._describe(catalog.models[name]) for name in catalog.names()])

    def _describe(self, record: ModelRecord) -> ModelInfo:
        aliases = record.aliases_by_version()
        versions = [
            ModelVersionInfo(
                version=number,
                aliases=aliases.get(number, []),
                run_id=record.versions[number].run_id,
                created_at=record.versions[number].created_at,
                metrics=self.store.run_metrics(record.versions[number].run_id),
            )
            for number in record.version_numbers()
        ]
        return ModelInfo(
            model=record.short_name,
            registered_name=record.registered_name,
            default_version=record.default_version(),
            versions=versions,
        )

    def ping(self) -> None:
        """Raise REGISTRY_UNAVAILABLE unless MLflow answers now (or answered within the TTL)."""
        self.catalog(allow_stale=False)
