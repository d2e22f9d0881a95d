"""The writer thread on a real SQLite file: expired records go at start, queued records are written before it stops,
and a required record that cannot be written is AUDIT_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from shared.kit.audit.store import open_store
from shared.kit.audit.trail import RECORDS_FAILED, RECORDS_WRITTEN, AuditTrail
from shared.kit.audit.verify import Verified, verify
from shared.kit.errors import ErrorCode, ServiceError
from tests.shared.kit.audit.test_chain import a_record


def test_the_writer_deletes_expired_records_at_start_and_writes_what_is_queued(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'trail.sqlite'}"
    store = open_store(uri)
    store.append([a_record(number, time=f"2025-0{number}-01T00:00:00.000000Z") for number in range(1, 4)])
    written = RECORDS_WRITTEN._value.get()
    trail = AuditTrail(uri, retention_days=183)
    trail.start()
    asyncio.run(trail.record([a_record(4), a_record(5)]))
    trail.close()
    assert RECORDS_WRITTEN._value.get() - written == 2
    assert verify(store) == Verified(records=2, first_seq=4, last_seq=5)
    store.close()


def test_a_required_record_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trail.sqlite"
    open_store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'no'); END")
    failed = RECORDS_FAILED._value.get()
    trail = AuditTrail(f"sqlite:///{path}", retention_days=183, required=True)
    trail.start()
    with pytest.raises(ServiceError) as refused:
        asyncio.run(trail.record([a_record(1)]))
    trail.close()
    assert refused.value.code is ErrorCode.AUDIT_UNAVAILABLE and refused.value.status == 503
    assert RECORDS_FAILED._value.get() - failed == 1
