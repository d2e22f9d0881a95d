"""The chain in a database: PostgreSQL (``postgresql://...``, psycopg2) or a SQLite file (``sqlite:///path``).

Two tables. ``audit_records``: one row per record, its fields as columns (objects as canonical JSON text), its
position ``seq``, ``prev_hash`` and ``hash``. ``audit_chain``: one row, the chain's ends: ``anchor_seq`` and
``anchor_hash`` (the first kept record's position and the hash it follows: the genesis hash until the retention
first deletes records), ``head_seq`` and ``head_hash`` (the newest record's), so that a deleted newest record and
records cut from the start show too.

Appending is one transaction that holds the chain row's lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL
``SELECT ... FOR UPDATE``): every worker process of the gateway and of inference appends to one chain.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.kit.audit.records import GENESIS_HASH, JSON_FIELDS, AuditRecord, canonical_json

COLUMNS = tuple(AuditRecord.__dataclass_fields__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_records (seq BIGINT PRIMARY KEY, "
    + ", ".join(f"{name} TEXT{'' if name in JSON_FIELDS else ' NOT NULL'}" for name in COLUMNS)
    + ", prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time)",
    "CREATE TABLE IF NOT EXISTS audit_chain (id INTEGER PRIMARY KEY CHECK (id = 1), anchor_seq BIGINT NOT NULL, "
    "anchor_hash TEXT NOT NULL, head_seq BIGINT NOT NULL, head_hash TEXT NOT NULL)",
    f"INSERT INTO audit_chain VALUES (1, 1, '{GENESIS_HASH}', 0, '{GENESIS_HASH}') ON CONFLICT (id) DO NOTHING",
)


@dataclass(frozen=True)
class ChainEnds:
    anchor_seq: int
    anchor_hash: str
    head_seq: int
    head_hash: str


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    fields: dict[str, Any]
    prev_hash: str
    hash: str


def _row_values(record: AuditRecord) -> list[Any]:
    fields = record.fields()
    return [canonical_json(fields[name]) if name in JSON_FIELDS else fields[name] for name in COLUMNS]


def _stored(row: tuple[Any, ...]) -> StoredRecord:
    seq, *values, prev_hash, hash_ = row
    fields = dict(zip(COLUMNS, values, strict=True))
    for name in JSON_FIELDS:
        # An edited cell that is no longer JSON stays text: its hash then fails, which names the record.
        with suppress(TypeError, ValueError):
            fields[name] = json.loads(fields[name]) if fields[name] is not None else None
    return StoredRecord(int(seq), fields, str(prev_hash), str(hash_))


class AuditStore:
    """The chain's tables over one DB-API connection; ``placeholder`` is the driver's parameter mark."""

    placeholder = "?"

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    # PostgreSQL locks the chain's row until the transaction ends; SQLite's BEGIN IMMEDIATE locked the file already.
    lock_clause = ""

    def _lock_chain(self, cursor: Any) -> ChainEnds:
        ends = "SELECT anchor_seq, anchor_hash, head_seq, head_hash FROM audit_chain WHERE id = 1"
        cursor.execute(ends + self.lock_clause)
        row = cursor.fetchone()
        return ChainEnds(int(row[0]), row[1], int(row[2]), row[3])

    def create_tables(self) -> None:
        with closing(self.connection.cursor()) as cursor:
            for statement in _SCHEMA:
                cursor.execute(statement)
        self.connection.commit()

    def append(self, records: list[AuditRecord]) -> int:
        """Append the records in order, in one transaction; returns the newest record's position."""
        insert = self._sql(
            f"INSERT INTO audit_records (seq, {', '.join(COLUMNS)}, prev_hash, hash) "
            f"VALUES ({', '.join('?' * (len(COLUMNS) + 3))})"
        )
        try:
            with closing(self.connection.cursor()) as cursor:
                ends = self._lock_chain(cursor)
                seq, prev_hash = ends.head_seq, ends.head_hash
                for record in records:
                    seq += 1
                    hash_ = record.chain_hash(prev_hash)
                    cursor.execute(insert, [seq, *_row_values(record), prev_hash, hash_])
                    prev_hash = hash_
                cursor.execute(self._sql("UPDATE audit_chain SET head_seq = ?, head_hash = ? WHERE id = 1"),
                               [seq, prev_hash])  # fmt: skip
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise
        return seq

    def purge(self, before: str) -> int:
        """Delete the records older than ``before`` (a record time) from the start of the chain, and move the
        anchor to the first record kept (the hash it follows stays checkable); returns how many were deleted."""
        try:
            with closing(self.connection.cursor()) as cursor:
                ends = self._lock_chain(cursor)
                cursor.execute(
                    self._sql("SELECT seq, prev_hash FROM audit_records WHERE time >= ? ORDER BY seq LIMIT 1"),
                    [before],
                )
                kept = cursor.fetchone()
                anchor_seq, anchor_hash = (int(kept[0]), kept[1]) if kept else (ends.head_seq + 1, ends.head_hash)
                cursor.execute(self._sql("DELETE FROM audit_records WHERE seq < ?"), [anchor_seq])
                deleted = cursor.rowcount
                cursor.execute(self._sql("UPDATE audit_chain SET anchor_seq = ?, anchor_hash = ? WHERE id = 1"),
                               [anchor_seq, anchor_hash])  # fmt: skip
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise
        return max(deleted, 0)

    def ends(self) -> ChainEnds:
        with closing(self.connection.cursor()) as cursor:
            ends = self._lock_chain(cursor)
        self.connection.commit()
        return ends

    def records(self, batch: int = 1000) -> Iterator[StoredRecord]:
        """Every record in position order, read ``batch`` at a time."""
        after = None
        query = f"SELECT seq, {', '.join(COLUMNS)}, prev_hash, hash FROM audit_records"
        while True:
            with closing(self.connection.cursor()) as cursor:
                if after is None:
                    cursor.execute(f"{query} ORDER BY seq LIMIT {batch}")
                else:
                    cursor.execute(self._sql(f"{query} WHERE seq > ? ORDER BY seq LIMIT {batch}"), [after])
                rows = cursor.fetchall()
            self.connection.commit()
            if not rows:
                return
            for row in rows:
                yield _stored(row)
            after = rows[-1][0]

    def seq_of_hash(self, hash_: str) -> int | None:
        """The position of the record with this hash, if one is stored."""
        with closing(self.connection.cursor()) as cursor:
            cursor.execute(self._sql("SELECT seq FROM audit_records WHERE hash = ? ORDER BY seq LIMIT 1"), [hash_])
            row = cursor.fetchone()
        self.connection.commit()
        return int(row[0]) if row else None

    def close(self) -> None:
        self.connection.close()


class SqliteStore(AuditStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun here (BEGIN IMMEDIATE takes the write lock at once, so two
        # processes never read the same head). timeout: how long to wait for another process's transaction.
        connection = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")  # readers (bt-audit verify) never block the writers
        connection.execute("PRAGMA synchronous=FULL")  # a committed record survives a power cut
        super().__init__(_AutoBegin(connection))


class _AutoBegin:
    """A sqlite3 connection in autocommit mode whose first statement after a commit opens ``BEGIN IMMEDIATE``:
    the DB-API shape (commit, rollback) the store is written for, with the write lock taken before the read."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.raw = connection

    def cursor(self) -> _BeginningCursor:
        return _BeginningCursor(self.raw)

    def commit(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


class _BeginningCursor:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.cursor = connection.cursor()

    def execute(self, sql: str, parameters: Any = ()) -> None:
        if not self.connection.in_transaction:
            self.cursor.execute("BEGIN IMMEDIATE")
        self.cursor.execute(sql, parameters)

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def fetchone(self) -> Any:
        return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self.cursor.fetchall()

    def close(self) -> None:
        self.cursor.close()


class PostgresStore(AuditStore):
    placeholder = "%s"
    lock_clause = " FOR UPDATE"

    def __init__(self, dsn: str) -> None:
        import psycopg2  # only where the trail is on PostgreSQL: the serving images need no driver otherwise

        super().__init__(psycopg2.connect(dsn, connect_timeout=5))


SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg2://")


def check_uri(uri: str) -> str:
    """The URI, if it names a store this module opens; else a ValueError saying what is accepted."""
    if uri.startswith(SQLITE_PREFIX) and len(uri) > len(SQLITE_PREFIX):
        return uri
    if uri.startswith(POSTGRES_PREFIXES):
        return uri
    raise ValueError(f"an audit URI is sqlite:///<path> or postgresql://...; got a URI starting {uri[:12]!r}")


def open_store(uri: str) -> AuditStore:
    """The store the URI names, its tables created when missing."""
    check_uri(uri)
    if uri.startswith(SQLITE_PREFIX):
        store: AuditStore = SqliteStore(Path(uri.removeprefix(SQLITE_PREFIX)))
    else:
        # libpq takes postgresql:// and postgres://; SQLAlchemy's driver suffix is not libpq's.
        store = PostgresStore(uri.replace("postgresql+psycopg2://", "postgresql://", 1))
    store.create_tables()
    return store
