"""The model registry: ``(model, version-or-alias)`` to a loaded servable, keyed by ``name/version``.

Which version a request means is the catalogue's rule (``catalog``, kept current by ``catalog_snapshot``).
Each version is built once into the loaded-model cache (``loaded_models``) by the builder of its kind: an ONNX
file downloaded into the verified cache (``mlflow_store``) and opened, or an ensemble of member versions loaded
(or reused) here. Every request for a version shares the one servable and its onnxruntime session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from services.inference.cache_trust import CacheSigner
from services.inference.catalog import ModelRecord, VersionRecord
from services.inference.catalog_snapshot import CatalogSnapshot
from services.inference.circuit import CircuitBreaker
from services.inference.ensemble import build_ensemble, read_spec
from services.inference.loaded_models import LoadedModels
from services.inference.metrics import run_recorder
from services.inference.mlflow_store import MlflowStore
from services.inference.servable import Classifier
from shared.core.ensemble_spec import EnsembleSpec
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Resolves names through the catalogue snapshot and keeps one loaded servable per version."""

    def __init__(
        self, snapshot: CatalogSnapshot, store: MlflowStore, loaded: LoadedModels[Classifier], intra_op_threads: int
    ) -> None:
        self.snapshot = snapshot
        self.store = store
        self.loaded = loaded
        self.intra_op_threads = intra_op_threads
        self._builders: dict[str, Callable[[ModelRecord, VersionRecord], Classifier]] = {
            "onnx": self._build_onnx,
            "ensemble": self._build_ensemble,
        }

    @property
    def cache_dir(self) -> Path:
        return self.store.cache_dir

    def resolve(self, model: str, version: str | None = None) -> tuple[ModelRecord, VersionRecord]:
        return self.snapshot.resolve(model, version)

    def get(self, model: str, version: str | None = None) -> Classifier:
        """The loaded servable for a model and version spec, downloaded and loaded once."""
        record, version_record = self.resolve(model, version)
        key = f"{record.short_name}/{version_record.version}"
        return self.loaded.get_or_load(key, lambda: self._builders[version_record.kind](record, version_record))

    def loaded_model(self, model: str, version: str | None = None) -> Classifier | None:
        """The servable if it is loaded and the catalogue is fresh, without waiting on anything (None otherwise):
        what a request may take on the event loop before it falls back to ``get`` in a worker thread."""
        catalog = self.snapshot.fresh()
        if catalog is None or not catalog.has(model, version):
            return None
        return self.loaded_version(*catalog.resolve(model, version))

    def loaded_version(self, record: ModelRecord, version_record: VersionRecord) -> Classifier | None:
        """The servable of a resolved version if it is loaded (None otherwise); never loads anything."""
        return self.loaded.ready(f"{record.short_name}/{version_record.version}")

    def _build_onnx(self, record: ModelRecord, version_record: VersionRecord) -> Classifier:
        """The version's ONNX file, checked against its sha256 right before onnxruntime opens it."""
        model, version = record.short_name, version_record.version
        path = self.store.download(record, version_record)
        # Every onnxruntime run of this version, whichever route asks for it, is recorded.
        classifier = OnnxClassifier(model, version, path, self.intra_op_threads, on_run=run_recorder(model, version))
        classifier.load()
        return classifier

    def _build_ensemble(self, record: ModelRecord, version_record: VersionRecord) -> Classifier:
        """No file of its own: its pinned members, loaded (or reused) through this registry."""
        return build_ensemble(record.short_name, version_record.version, self.ensemble_spec(record, version_record),
                              self.get)  # fmt: skip

    def ensemble_spec(self, record: ModelRecord, version_record: VersionRecord) -> EnsembleSpec:
        """An ensemble version's members, weights and sets: its registered spec file, checked against its sha256
        on download and on every load, like a model's file."""
        path = self.store.download_spec(record, version_record)
        return read_spec(path, f"{record.short_name}/{version_record.version}")

    def preload_defaults(self) -> None:
        """Load the default version of every registered model; failures are logged, not raised."""
        try:
            names = self.snapshot.current().defaults()
        except ServiceError as exc:
            logger.warning("preload skipped: %s", exc.message)
            return
        for name in names:
            try:
                self.get(name)
            except ServiceError as exc:
                logger.warning("preload of %s failed: %s", name, exc.message)

    def ping(self) -> None:
        """Raise REGISTRY_UNAVAILABLE unless MLflow answers now (or answered within the TTL)."""
        self.snapshot.current(allow_stale=False)

    def readiness(self, *, require_defaults: bool = True) -> str:
        """The registry's state (``reachable`` or ``unreachable since <time>``) once the default version of
        every model is loaded (with ``require_defaults``); otherwise MODEL_NOT_READY naming those that cannot
        be, or REGISTRY_UNAVAILABLE when there is no catalogue at all (MLflow never answered and none was kept
        on disk).

        Never waits on a hung MLflow once it is known to be unreachable: what is loaded answers at once,
        and what is not is loaded now or fails fast.
        """
        catalog = self.snapshot.current()
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
        return self.snapshot.breaker.describe()


def open_registry(
    tracking_uri: str,
    cache_dir: Path,
    *,
    intra_op_threads: int = 0,
    catalog_ttl_s: float = 5.0,
    metric_prefixes: tuple[str, ...] = (),
    registry_retry_s: float = 5.0,
    signer: CacheSigner | None = None,
) -> ModelRegistry:
    """A registry on one MLflow server: its store, circuit breaker, catalogue snapshot and loaded-model cache
    (``signer``: what signs the cache's records; see cache_trust)."""
    breaker = CircuitBreaker(registry_retry_s)
    store = MlflowStore(tracking_uri, cache_dir, metric_prefixes, breaker, signer)
    snapshot = CatalogSnapshot(store, breaker, store.cache_dir, catalog_ttl_s)
    return ModelRegistry(snapshot, store, LoadedModels(registry_retry_s), intra_op_threads)
