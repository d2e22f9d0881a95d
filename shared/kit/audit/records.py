"""What one audit record holds, and the hash that chains it to the one before.

A record never holds pixels, file names or DICOM patient data: only the input's sha256, who asked, on which route,
which model version (and the ensemble's members) answered what, the guard's verdict and the request id.

The hash of a record is ``sha256(canonical_json({**fields, "prev_hash": <hash of the record before>}))`` in hex,
where the canonical JSON has sorted keys, no whitespace (``","`` and ``":"``), UTF-8 without escapes, and no NaN.
The first record of a fresh trail follows ``GENESIS_HASH``. The record's position (``seq``) is not hashed: the
chain itself is the order, so moving a record shows as a broken link, not as an edited record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
# Who asked, when the prediction routes take anonymous callers (no caller tokens configured).
ANONYMOUS = "anonymous"
# Fixed width, so that times compare as text (the retention's cut-off is a comparison in SQL).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# The guard's verdict fields kept in a record (shared.kit.schemas.OodOut).
GUARD_FIELDS = ("score", "threshold", "flag", "flag_threshold", "unusual", "declared_modality", "guard_version")
# The fields stored as JSON text in the database (objects, or null).
JSON_FIELDS = ("members", "probabilities", "guard")


def utc_now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    """One classification answered. ``item`` tells the answers of one request apart: the file's position in a
    batch or an Open Inference Protocol request ("0" for a single upload), the model's name in a comparison."""

    time: str
    caller: str
    route: str
    request_id: str
    item: str
    model: str
    version: str
    members: dict[str, str] | None
    input_sha256: str
    label: str
    probabilities: dict[str, float]
    guard: dict[str, Any] | None

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    def chain_hash(self, prev_hash: str) -> str:
        return chain_hash(self.fields(), prev_hash)


def chain_hash(fields: dict[str, Any], prev_hash: str) -> str:
    """The hash of a record with these fields following the record whose hash is ``prev_hash``."""
    return sha256_hex(canonical_json({**fields, "prev_hash": prev_hash}).encode())


def guard_verdict(ood: dict[str, Any] | None) -> dict[str, Any] | None:
    """The guard's verdict as a record keeps it; None when no guard judged the input."""
    if not ood:
        return None
    return {key: ood.get(key) for key in GUARD_FIELDS}


def from_prediction(
    answer: dict[str, Any], *, caller: str, route: str, request_id: str, item: str, input_sha256: str
) -> AuditRecord:
    """The record of one answer shaped like ``PredictionOut`` (model, version, label, probabilities, members, ood)."""
    return AuditRecord(
        time=utc_now(),
        caller=caller,
        route=route,
        request_id=request_id,
        item=item,
        model=str(answer["model"]),
        version=str(answer["version"]),
        members=answer.get("members"),
        input_sha256=input_sha256,
        label=str(answer["label"]),
        probabilities={str(name): float(value) for name, value in answer["probabilities"].items()},
        guard=guard_verdict(answer.get("ood")),
    )
