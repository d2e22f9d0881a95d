"""A circuit breaker in front of MLflow: after a failure, requests stop calling it until a probe succeeds.

Closed: calls go through. A failed call (MLflow down, hung past its timeout, answering 5xx) opens it and
records since when MLflow is unreachable. While open, callers get REGISTRY_UNAVAILABLE at once instead of
waiting for MLflow's timeout; one probe at a time is let through at most every ``retry_interval_s``
(the registry's background catalogue refresh takes it, so no request waits on a hung MLflow).
A successful call closes it again.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from prometheus_client import Counter

# Every call the registry makes to MLflow, by outcome: "ok" and "failed" reached it (or tried to),
# "short_circuited" were answered by the breaker without calling it.
REGISTRY_CALLS = Counter(
    "bt_inference_registry_calls_total",
    "Calls to the MLflow registry, by outcome (ok, failed, short_circuited).",
    ["outcome"],
)


class CircuitBreaker:
    """Remembers that MLflow failed, so that the next calls fail fast; thread-safe."""

    def __init__(self, retry_interval_s: float) -> None:
        self.retry_interval_s = retry_interval_s
        self._lock = threading.Lock()
        self._open = False
        self._unreachable_since: datetime | None = None
        self._last_attempt = 0.0  # monotonic time of the last call let through while open
        self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open

    @property
    def unreachable_since(self) -> datetime | None:
        """When the current outage began (UTC), or None while MLflow answers."""
        with self._lock:
            return self._unreachable_since

    def allow(self) -> bool:
        """Whether an ordinary call may go to MLflow now (only while closed); counts the refusals."""
        with self._lock:
            allowed = not self._open
        if not allowed:
            REGISTRY_CALLS.labels("short_circuited").inc()
        return allowed

    def try_probe(self) -> bool:
        """Claim the one probe allowed per retry interval while open (always granted while closed).

        The caller must report the outcome with ``success()`` or ``failure()``.
        """
        with self._lock:
            if not self._open:
                return True
            if self._probing or time.monotonic() - self._last_attempt < self.retry_interval_s:
                return False
            self._probing = True
            self._last_attempt = time.monotonic()
            return True

    def success(self) -> None:
        REGISTRY_CALLS.labels("ok").inc()
        with self._lock:
            self._open = False
            self._probing = False
            self._unreachable_since = None

    def failure(self) -> None:
        REGISTRY_CALLS.labels("failed").inc()
        with self._lock:
            if not self._open:
                self._unreachable_since = datetime.now(UTC)
            self._open = True
            self._probing = False
            self._last_attempt = time.monotonic()

    def describe(self) -> str:
        """``reachable`` or ``unreachable since <ISO time>``, as ``/readyz`` reports it."""
        since = self.unreachable_since
        return "reachable" if since is None else f"unreachable since {since.isoformat(timespec='seconds')}"
