"""The audit trail as a route sees it: ``AuditorDep`` knows the caller (``shared.kit.auth.caller_name``), the route
and the request id; the route hands it each answer with the sha256 of the input it classified."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from shared.kit.audit.records import from_prediction
from shared.kit.audit.trail import RECORDS_FAILED, AuditTrail
from shared.kit.auth import CallerName
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.upstream import REQUEST_ID_HEADER

logger = logging.getLogger(__name__)

# (item, sha256 of the input, the answer shaped like PredictionOut)
Answer = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class Auditor:
    """One request's view of the trail (``trail`` None: the service keeps no trail)."""

    trail: AuditTrail | None
    caller: str
    route: str
    request_id: str

    @property
    def on(self) -> bool:
        return self.trail is not None

    async def record(self, answers: Iterable[Answer]) -> None:
        """One record per answer; see ``AuditTrail.record`` for what a failure does."""
        if self.trail is None:
            return
        try:
            records = [
                from_prediction(answer, caller=self.caller, route=self.route, request_id=self.request_id, item=item,
                                input_sha256=digest)
                for item, digest, answer in answers
            ]  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # An answer that cannot be read (it passed through unparsed) is a record lost, never a 500.
            RECORDS_FAILED.inc()
            logger.error("audit trail: an answer on %s could not be read into a record: %r", self.route, exc)
            if self.trail.required:
                raise ServiceError(ErrorCode.AUDIT_UNAVAILABLE, "The answer could not be recorded.") from exc
            return
        await self.trail.record(records)


def get_auditor(request: Request, caller: CallerName) -> Auditor:
    route = request.scope.get("route")
    return Auditor(
        getattr(request.app.state, "audit_trail", None),
        caller,
        getattr(route, "path", request.url.path),  # the template (/v2/models/{model}/infer), never the raw path
        request.headers.get(REQUEST_ID_HEADER, ""),
    )


AuditorDep = Annotated[Auditor, Depends(get_auditor)]


def open_trail(settings: Any) -> AuditTrail | None:
    """The trail a service's ``AuditSettings`` describe, started; None when the trail is off."""
    if not settings.audit:
        return None
    trail = AuditTrail(settings.audit_uri, settings.audit_retention_days, settings.audit_required)
    trail.start()
    return trail
