"""The ``audit_*`` settings every service that answers classifications inherits (``BT_<SERVICE>_AUDIT_*``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from shared.kit.audit.store import check_uri

DEFAULT_AUDIT_URI = "sqlite:///var/audit/trail.sqlite"
# Six months: the EU AI Act (Art. 12, Art. 26(6)) asks at least that of a high-risk system's automatic logs.
DEFAULT_RETENTION_DAYS = 183


class AuditSettings(BaseSettings):
    audit: bool = Field(True, description="Append one audit record per classification answered (docs/reliability.md).")
    audit_uri: str = Field(
        DEFAULT_AUDIT_URI,
        description="Where the trail is: sqlite:///<path> (relative to the working folder; sqlite:////<absolute>) "
        "or postgresql://user:password@host:port/database. Every service of a stack names the same trail.",
    )
    audit_retention_days: int = Field(
        DEFAULT_RETENTION_DAYS, ge=1, description="Records older than this are deleted from the start of the chain."
    )
    audit_required: bool = Field(
        False,
        description="Refuse (503 AUDIT_UNAVAILABLE) an answer whose record cannot be written. Off: the answer is "
        "given, and the failure is counted (bt_audit_records_failed_total) and logged.",
    )

    @field_validator("audit_uri")
    @classmethod
    def known_store(cls, value: str) -> str:
        return check_uri(value)
