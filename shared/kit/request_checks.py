"""Checks every service applies to every request before its routes see it: no unsafe text in the URL, and a total
deadline for reading the body.

- A path or query holding NUL, another control character or bytes that are not UTF-8 (a percent-encoded unpaired
  surrogate is one) is 422 INVALID_REQUEST, whatever the route: such text breaks file systems, logs and MLflow
  filters further in. JSON bodies are checked by their models (``shared.kit.params.refuse_unsafe_text``).
- uvicorn has no read timeout: a client that sends a Content-Length and then nothing, or trickles a byte at a time,
  holds the request (and whatever the handler holds) for as long as it likes. Its body must arrive within
  ``body_timeout_s`` of the request's start (408 REQUEST_TIMEOUT after that). Half-sent headers never reach the app:
  nginx's ``client_header_timeout`` cuts them at the edge (uvicorn 0.54 offers no such setting; checked).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kit.errors import ErrorCode, ServiceError, error_response, is_oip_path
from shared.kit.uploads import CutShortAnswer

DEFAULT_BODY_TIMEOUT_S = 60.0
# C0 controls but tab, line feed and carriage return (as shared.kit.params), and DEL.
_CONTROL_BYTES = frozenset(range(0x20)) - {0x09, 0x0A, 0x0D} | {0x7F}


def unsafe_url_text(raw: bytes) -> bool:
    """Whether a raw path or query, once percent-decoded, holds control characters or is not UTF-8."""
    decoded = unquote_to_bytes(raw)
    if any(byte in _CONTROL_BYTES for byte in decoded):
        return True
    try:
        decoded.decode("utf-8")  # strict: an encoded surrogate (ED A0 80...) is invalid UTF-8
    except UnicodeDecodeError:
        return True
    return False


def _unsafe_url() -> ServiceError:
    return ServiceError(
        ErrorCode.INVALID_REQUEST,
        "The URL must not hold NUL bytes, control characters or text that is not UTF-8 (e.g. unpaired surrogates).",
    )


def _too_slow(timeout_s: float) -> ServiceError:
    return ServiceError(
        ErrorCode.REQUEST_TIMEOUT, f"The request body did not arrive within {timeout_s:g} s; send it again, faster."
    )


class _BodyTooSlow(Exception):
    """Raised into the app by the timed ``receive`` once the body's deadline has passed."""


class RequestChecks:
    """ASGI middleware: unsafe URL text is refused before the app runs; the body is read within a deadline."""

    def __init__(self, app: ASGIApp, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        # Made once: the same answer for every body too slow to arrive (error_response only reads it).
        self._too_slow = _too_slow(body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
        if unsafe_url_text(raw_path) or unsafe_url_text(scope.get("query_string", b"")):
            await error_response(Request(scope), _unsafe_url())(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_timeout_s
        answer = CutShortAnswer(send)
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # after the body, receive only reports a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                answer.cut = True
                raise _BodyTooSlow from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await answer.run(self.app, scope, timed_receive, receive, self._too_slow)


UNSAFE_URL_DESCRIPTION = "INVALID_REQUEST: the URL holds NUL bytes, control characters or text that is not UTF-8."
BODY_TIMEOUT_DESCRIPTION = "REQUEST_TIMEOUT: the request body did not arrive within the service's body_timeout_s."


def declare_request_checks(app: FastAPI) -> None:
    """Add the statuses ``RequestChecks`` may answer on any route to every operation of the OpenAPI schema: 422
    for unsafe URL text (400 on the Open Inference Protocol's routes, which declare it already) and 408."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build_schema()
        for path, operations in schema.get("paths", {}).items():
            oip = is_oip_path(path)
            for operation in operations.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                # Each route's own error body: the 400 the host check declared everywhere has it.
                body = responses.get("400", {}).get("content")
                added = {"408": BODY_TIMEOUT_DESCRIPTION, **({} if oip else {"422": UNSAFE_URL_DESCRIPTION})}
                for status, description in added.items():
                    if status in responses:
                        told = responses[status].get("description", "")
                        if description not in told:
                            responses[status]["description"] = f"{told} Or {description}".strip()
                    else:
                        responses[status] = {"description": description, **({"content": body} if body else {})}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
