"""The writer a service holds: records are appended by one background thread, so no request waits on the database.

A request hands its records over (``AuditTrail.record``) and goes on; the thread wakes at most every
``GROUP_COMMIT_S``, takes everything queued since its last write and appends it in one transaction: one commit (one
fsync) and one wake-up for many answers, which is what keeps the trail off the gateway's latency (a commit per
answer, even in a thread, cost it about 2 ms of p50 on a loaded 2-core machine: docs/benchmarks.md).

A write that fails is counted (``bt_audit_records_failed_total``) and logged, and the answers were given all the
same, unless the service requires its records (``audit_required``): then the request waits for its own write (no
grouping) and a failure is 503 AUDIT_UNAVAILABLE.
The thread also deletes the records older than the retention, at start and then hourly.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from shared.kit.audit.records import TIME_FORMAT, AuditRecord
from shared.kit.audit.store import AuditStore, open_store
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

RECORDS_WRITTEN = Counter("bt_audit_records_written", "Audit records appended to the trail.")
RECORDS_FAILED = Counter("bt_audit_records_failed", "Audit records that could not be appended (the answer was given).")

PURGE_INTERVAL_S = 3600.0
# How long records wait in memory to be written together; a required record is written at once.
GROUP_COMMIT_S = 0.25
# Most records in one transaction: a burst is written in a few commits, not one per request.
MAX_RECORDS_PER_WRITE = 500
_STOP = object()


class AuditTrail:
    """Appends records to the trail at ``uri`` from a thread of its own; ``start`` and ``close`` bracket its life."""

    def __init__(self, uri: str, retention_days: int, required: bool = False) -> None:
        self.uri = uri
        self.retention = timedelta(days=retention_days)
        self.required = required
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._store: AuditStore | None = None
        self._next_purge = 0.0

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def submit(self, records: list[AuditRecord]) -> Future[None]:
        """Queue the records; the future is done once they are written (or failed)."""
        future: Future[None] = Future()
        self._queue.put((records, future))
        return future

    async def record(self, records: list[AuditRecord]) -> None:
        """Hand the records over; when records are required, wait for them and refuse the answer without them."""
        if not records:
            return
        future = self.submit(records)
        if not self.required:
            return
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:
            raise ServiceError(
                ErrorCode.AUDIT_UNAVAILABLE,
                "The answer could not be recorded in the audit trail, and this service gives no unrecorded answers; "
                "try again shortly.",
            ) from exc

    # -- the thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch, stop = [], first is _STOP
            if not stop:
                batch.append(first)
                if not self.required:
                    # Sleeping, not waiting on the queue: a request's put wakes nobody.
                    time.sleep(GROUP_COMMIT_S)
            while not stop and len(batch) < MAX_RECORDS_PER_WRITE:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)  # type: ignore[arg-type]
            self._purge_when_due()
            if stop:
                if self._store is not None:
                    self._store.close()
                return

    def _open(self) -> AuditStore:
        if self._store is None:
            self._store = open_store(self.uri)
        return self._store

    def _write(self, batch: list[tuple[list[AuditRecord], Future[None]]]) -> None:
        records = [record for records, _ in batch for record in records]
        try:
            self._open().append(records)
        except Exception as exc:
            RECORDS_FAILED.inc(len(records))
            logger.error("audit trail: %d record(s) not written: %s: %s", len(records), type(exc).__name__, exc)
            self._reconnect_next_time()
            for _, future in batch:
                future.set_exception(exc)
            return
        RECORDS_WRITTEN.inc(len(records))
        for _, future in batch:
            future.set_result(None)

    def _reconnect_next_time(self) -> None:
        # A lost connection is opened again by the next write; a store that still works is not worth keeping
        # apart from it.
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # closing a broken connection may fail too; it is dropped either way
                logger.debug("closing the audit store failed", exc_info=True)
            self._store = None

    def _purge_when_due(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        try:
            deleted = self._open().purge(cutoff(self.retention))
        except Exception as exc:
            logger.error("audit trail: deleting expired records failed: %s: %s", type(exc).__name__, exc)
            self._reconnect_next_time()
            return
        if deleted:
            logger.info("audit trail: deleted %d record(s) older than %s days", deleted, self.retention.days)


def cutoff(retention: timedelta) -> str:
    """The time before which records have expired, as records write times."""
    return (datetime.now(UTC) - retention).strftime(TIME_FORMAT)
