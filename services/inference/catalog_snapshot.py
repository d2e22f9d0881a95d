"""The registry's current catalogue: MLflow's last answer, refreshed without ever holding a request on MLflow.

An expired snapshot is refreshed in the background while requests keep it; the last catalogue is kept on disk
for a restart (``model_store``); while the circuit breaker (``circuit``) is open, MLflow is only asked by its
background probe, at most every ``registry_retry_s``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.inference import model_store
from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from services.inference.circuit import CircuitBreaker
from services.inference.mlflow_store import MlflowStore
from shared.kit.errors import ServiceError

logger = logging.getLogger(__name__)


class CatalogSnapshot:
    """The latest ``Catalog`` of one MLflow server, and the rules for asking it again."""

    def __init__(self, store: MlflowStore, breaker: CircuitBreaker, cache_dir: Path, ttl_s: float = 5.0) -> None:
        self.store = store
        self.breaker = breaker
        self.cache_dir = cache_dir
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshing = False  # a background refresh is running
        # The catalogue MLflow last answered, kept on disk: until MLflow answers, it is what is served.
        self._catalog: Catalog | None = model_store.load_catalog(cache_dir, store.tracking_uri, store.signer)

    def current(self, max_age_s: float | None = None, *, allow_stale: bool = True) -> Catalog:
        """The snapshot, refreshed when older than ``max_age_s`` (default: the TTL).

        An expired snapshot is returned at once while one background refresh asks MLflow (so no request
        waits on a slow or hung MLflow), and so is any snapshot while MLflow is unreachable. MLflow is asked
        in the request only when the snapshot was only read from disk, when ``max_age_s`` or
        ``allow_stale=False`` asks for its answer, or when there is no snapshot at all (then a 503 if it fails).
        """
        max_age = self.ttl_s if max_age_s is None else max_age_s
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

    def fresh(self) -> Catalog | None:
        """The snapshot when MLflow answered it within the TTL; None otherwise (never asks MLflow)."""
        with self._lock:
            current = self._catalog
        return current if current is not None and not current.from_disk and current.age_s() < self.ttl_s else None

    def resolve(self, model: str, version: str | None = None) -> tuple[ModelRecord, VersionRecord]:
        """Find a model and version, or raise MODEL_NOT_FOUND / VERSION_NOT_FOUND naming what exists."""
        catalog = self.current()
        if not catalog.has(model, version):
            # A miss may only mean the snapshot predates a new registration: look once more.
            catalog = self.current(max_age_s=0)
        return catalog.resolve(model, version)

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
            model_store.save_catalog(self.cache_dir, fresh, self.store.tracking_uri, self.store.signer)
