"""The hash chain on a real SQLite file and a real PostgreSQL database: every edit, deletion and reordering made
directly in the database is named by ``python -m shared.kit.audit verify`` (the ``bt-audit`` command), and the
retention deletes from the start of the chain without breaking it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg2
import pytest

from deploy.postgres import PostgresCluster
from deploy.processes import PROJECT_ROOT
from shared.kit.audit.records import AuditRecord, chain_hash, from_prediction
from shared.kit.audit.store import AuditStore, open_store
from shared.kit.audit.verify import Finding, Verified, verify

RECORDS = 6


def a_record(number: int, time: str | None = None) -> AuditRecord:
    answer = {
        "model": "ensemble",
        "version": "3",
        "label": "glioma",
        "probabilities": {"glioma": 0.7, "meningioma": 0.1, "notumor": 0.1, "pituitary": 0.1},
        "members": {"cnn": "2", "rf": "1"},
        "ood": {"score": 0.1, "threshold": 0.5, "flag": False, "unusual": False, "guard_version": "1"},
    }
    record = from_prediction(
        answer, caller="radiology", route="/v1/predict", request_id=f"req-{number}", item="0", input_sha256="ab" * 32
    )
    return record if time is None else AuditRecord(**{**record.fields(), "time": time})


def bt_audit(uri: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "shared.kit.audit", "--uri", uri, *arguments],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=60, check=False,
    )  # fmt: skip


class Trail:
    """A trail of six records and a way to run SQL on it directly, as someone tampering with it would."""

    def __init__(self, uri: str, execute: Callable[[str], None]) -> None:
        self.uri = uri
        self.execute = execute
        store = open_store(uri)
        store.append([a_record(number) for number in range(1, RECORDS + 1)])
        store.close()

    def swap(self, first: int, second: int) -> None:
        for statement in (
            f"UPDATE audit_records SET seq = -1 WHERE seq = {first}",
            f"UPDATE audit_records SET seq = {first} WHERE seq = {second}",
            f"UPDATE audit_records SET seq = {second} WHERE seq = -1",
        ):
            self.execute(statement)


@pytest.fixture
def sqlite_trail(tmp_path: Any) -> Trail:
    path = tmp_path / "trail.sqlite"

    def execute(statement: str) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute(statement)

    return Trail(f"sqlite:///{path}", execute)


@pytest.fixture
def postgres_trail(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> Iterator[Trail]:
    database = f"audit_{request.node.name.split('[')[-1].rstrip(']').replace('-', '_')}"
    admin = psycopg2.connect(postgres_cluster.dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        cursor.execute(f"CREATE DATABASE {database}")
    dsn = postgres_cluster.dsn.rsplit("/", 1)[0] + f"/{database}"

    def execute(statement: str) -> None:
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)
        connection.close()

    yield Trail(dsn, execute)
    admin.close()


TAMPERING: list[tuple[str, Callable[[Trail], None], str]] = [
    ("edited-label", lambda t: t.execute("UPDATE audit_records SET label = 'notumor' WHERE seq = 3"),
     "BROKEN: record 3 (time "),
    ("edited-probabilities", lambda t: t.execute(
        """UPDATE audit_records SET probabilities = '{"glioma":0.1,"meningioma":0.1,"notumor":0.7,"pituitary":0.1}'
        WHERE seq = 4"""), "BROKEN: record 4 "),
    ("edited-caller", lambda t: t.execute("UPDATE audit_records SET caller = 'someone' WHERE seq = 1"),
     "BROKEN: record 1 "),
    ("deleted-middle", lambda t: t.execute("DELETE FROM audit_records WHERE seq = 3"), "BROKEN: record 3 was deleted"),
    ("deleted-first", lambda t: t.execute("DELETE FROM audit_records WHERE seq = 1"), "BROKEN: record 1 was deleted"),
    ("deleted-newest", lambda t: t.execute("DELETE FROM audit_records WHERE seq = 6"), "BROKEN: record 6 was deleted"),
    ("reordered", lambda t: t.swap(2, 5), "BROKEN: record 2 (time "),
]  # fmt: skip


@pytest.mark.parametrize(("case", "tamper", "named"), TAMPERING, ids=[case for case, _, _ in TAMPERING])
def test_verify_names_the_first_tampered_record_in_sqlite(
    sqlite_trail: Trail, case: str, tamper: Callable[[Trail], None], named: str
) -> None:
    intact = bt_audit(sqlite_trail.uri, "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"OK: {RECORDS} record(s), positions 1..{RECORDS}" in intact.stdout
    tamper(sqlite_trail)
    broken = bt_audit(sqlite_trail.uri, "verify")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stdout.startswith(named), broken.stdout
    kind = case.split("-")[0]
    assert f" was {kind}" in broken.stdout


@pytest.mark.parametrize(("case", "tamper", "named"), TAMPERING, ids=[case for case, _, _ in TAMPERING])
def test_verify_names_the_first_tampered_record_in_postgresql(
    postgres_trail: Trail, case: str, tamper: Callable[[Trail], None], named: str
) -> None:
    assert bt_audit(postgres_trail.uri, "verify").returncode == 0
    tamper(postgres_trail)
    broken = bt_audit(postgres_trail.uri, "verify")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stdout.startswith(named), broken.stdout
    assert f" was {case.split('-')[0]}" in broken.stdout


def test_a_recomputed_hash_still_names_the_edited_record(sqlite_trail: Trail) -> None:
    store = open_store(sqlite_trail.uri)
    third = next(record for record in store.records() if record.seq == 3)
    edited = {**third.fields, "label": "notumor"}
    sqlite_trail.execute(
        f"UPDATE audit_records SET label = 'notumor', hash = '{chain_hash(edited, third.prev_hash)}' WHERE seq = 3"
    )
    finding = verify(store)
    store.close()
    assert isinstance(finding, Finding)
    assert (finding.seq, finding.kind) == (3, "edited")


def test_the_hash_is_sha256_of_the_canonical_json(sqlite_trail: Trail) -> None:
    import hashlib
    import json

    store = open_store(sqlite_trail.uri)
    first = next(store.records())
    store.close()
    canonical = json.dumps({**first.fields, "prev_hash": "0" * 64}, sort_keys=True, separators=(",", ":"))
    assert first.hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert "file" not in " ".join(first.fields)  # no file name field, no pixels


def test_retention_deletes_from_the_start_and_the_chain_stays_verifiable(tmp_path: Any) -> None:
    uri = f"sqlite:///{tmp_path / 'trail.sqlite'}"
    store = open_store(uri)
    old = [a_record(number, time=f"2020-01-0{number}T00:00:00.000000Z") for number in range(1, 4)]
    store.append(old + [a_record(number) for number in range(4, 7)])
    purged = bt_audit(uri, "purge", "--retention-days", "183")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 3 record(s)" in purged.stdout
    result = verify(store)
    assert result == Verified(records=3, first_seq=4, last_seq=6)
    store.append([a_record(7)])
    assert verify(store) == Verified(records=4, first_seq=4, last_seq=7)
    # The anchor keeps the first kept record's prev-hash: deleting it now is still named.
    sqlite_trail_delete = sqlite3.connect(tmp_path / "trail.sqlite")
    sqlite_trail_delete.execute("DELETE FROM audit_records WHERE seq = 4")
    sqlite_trail_delete.commit()
    finding = verify(store)
    store.close()
    assert isinstance(finding, Finding) and (finding.seq, finding.kind) == (4, "deleted")


def _append_many(uri: str, count: int) -> None:
    store = open_store(uri)
    for number in range(count):
        store.append([a_record(number)])
    store.close()


def test_processes_appending_at_once_make_one_chain(tmp_path: Any) -> None:
    """Every worker process of the gateway and of inference appends to one trail."""
    uri = f"sqlite:///{tmp_path / 'trail.sqlite'}"
    open_store(uri).close()
    with ProcessPoolExecutor(max_workers=3) as pool:
        list(pool.map(_append_many, [uri] * 3, [40] * 3))
    store: AuditStore = open_store(uri)
    assert verify(store) == Verified(records=120, first_seq=1, last_seq=120)
    store.close()
