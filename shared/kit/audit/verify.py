"""Walking the chain from its anchor to its head: the first record that was edited, deleted or moved.

Each record's hash is computed again from its fields and the hash it follows; each must follow the one before it
(``prev_hash``) with the next position, the first one the anchor, the last one the head. The first break is named:

- ``edited``: the record's fields no longer give its hash (or, when its hash was recomputed too, the next record no
  longer follows it: the edited one is still the one named);
- ``deleted``: a position is missing (between two records, at the start, or the newest ones);
- ``reordered``: the record follows another record of the trail than the one before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.kit.audit.records import chain_hash
from shared.kit.audit.store import AuditStore, StoredRecord


@dataclass(frozen=True)
class Finding:
    """The first break: the record's position, what happened to it, and how it was told."""

    seq: int
    kind: str  # edited, deleted, reordered
    detail: str
    request_id: str | None = None
    time: str | None = None

    def describe(self) -> str:
        known = f" (time {self.time}, request {self.request_id})" if self.request_id else ""
        return f"record {self.seq}{known} was {self.kind}: {self.detail}"


@dataclass(frozen=True)
class Verified:
    records: int
    first_seq: int
    last_seq: int


def _named(record: StoredRecord, kind: str, detail: str) -> Finding:
    return Finding(record.seq, kind, detail, record.fields.get("request_id"), record.fields.get("time"))


def verify(store: AuditStore) -> Verified | Finding:
    """The chain intact (how many records, from where to where), or its first break."""
    ends = store.ends()
    expected_seq, expected_prev = ends.anchor_seq, ends.anchor_hash
    previous: StoredRecord | None = None
    count = 0
    for record in store.records():
        if chain_hash(record.fields, record.prev_hash) != record.hash:
            return _named(record, "edited", "its fields and the hash it follows no longer give its stored hash")
        if record.seq > expected_seq:
            detail = f"position {expected_seq} is missing; the next record is {record.seq}"
            return Finding(expected_seq, "deleted", detail)
        if record.seq < expected_seq:
            return _named(record, "reordered", f"it lies before the chain's first kept position {ends.anchor_seq}")
        if record.prev_hash != expected_prev:
            moved_from = store.seq_of_hash(record.prev_hash)
            if moved_from is not None:
                return _named(record, "reordered", f"it follows record {moved_from}, not the record before it")
            if previous is not None:
                return _named(previous, "edited", f"record {record.seq} no longer follows it (its hash was recomputed)")
            return _named(record, "reordered", "it does not follow the chain's anchor (records were cut or moved)")
        expected_seq, expected_prev, previous = record.seq + 1, record.hash, record
        count += 1
    if expected_seq - 1 < ends.head_seq:
        return Finding(expected_seq, "deleted", f"positions {expected_seq}..{ends.head_seq} (the newest) are missing")
    if expected_seq - 1 > ends.head_seq or expected_prev != ends.head_hash:
        return Finding(ends.head_seq, "edited", "the newest record is not the one the chain's head names")
    return Verified(count, ends.anchor_seq, expected_seq - 1)
