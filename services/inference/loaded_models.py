"""The loaded-model cache: ``name/version`` -> one loaded servable, each loaded once however many ask at once.

Each load and each failed load is counted (``MODEL_LOADS``). A failed load is remembered for ``retry_s`` and
its error replayed meanwhile, instead of downloading a bad file again on every request; an unreachable
registry is not remembered here (the circuit breaker already is).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from services.inference.metrics import MODEL_LOADS
from services.inference.servable import Servable
from shared.kit.errors import ErrorCode, ServiceError

ServableT = TypeVar("ServableT", bound=Servable)


class LoadedModels(Generic[ServableT]):
    """Loaded servables by key; ``get_or_load`` builds a missing one with the function it is given."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._servables: dict[str, ServableT] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._failures: dict[str, tuple[float, ServiceError]] = {}

    def ready(self, key: str) -> ServableT | None:
        """The loaded servable of ``key`` when it is ready, without waiting on a load in progress."""
        with self._lock:
            servable = self._servables.get(key)
        return servable if servable is not None and servable.ready else None

    def get_or_load(self, key: str, build: Callable[[], ServableT]) -> ServableT:
        """The servable of ``key``, built and loaded (``build``) by the first caller while the others wait."""
        servable = self.ready(key)
        if servable is not None:
            return servable
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            return self._load(key, build)

    def _load(self, key: str, build: Callable[[], ServableT]) -> ServableT:
        servable = self.ready(key)
        if servable is not None:  # loaded while this caller waited for the lock
            return servable
        with self._lock:
            failed = self._failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < self.retry_s:
            raise failed[1]
        model, _, version = key.partition("/")
        try:
            servable = build()
        except Exception as exc:
            MODEL_LOADS.labels(model, version, "failed").inc()
            # A file that fails its check, a model onnxruntime refuses: it would fail the same way again at once.
            if isinstance(exc, ServiceError) and exc.code is not ErrorCode.REGISTRY_UNAVAILABLE:
                with self._lock:
                    self._failures[key] = (time.monotonic(), exc)
            raise
        with self._lock:
            self._servables[key] = servable
            self._failures.pop(key, None)
        MODEL_LOADS.labels(model, version, "ok").inc()
        return servable

    def all_ready(self) -> list[ServableT]:
        """Every loaded servable that is ready (e.g. to size a body limit by the largest input served)."""
        with self._lock:
            return [servable for servable in self._servables.values() if servable.ready]

    def states(self) -> dict[str, bool]:
        """``name/version`` -> ready flag of every version loaded so far (False: its last load failed)."""
        with self._lock:
            states = {key: False for key in self._failures}
            states.update({key: servable.ready for key, servable in self._servables.items()})
        return dict(sorted(states.items()))
