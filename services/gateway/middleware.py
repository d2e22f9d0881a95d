"""Request ids: every request gets one (the client's ``x-request-id`` or a new one), echoed back."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.upstream import REQUEST_ID_HEADER

_HEADER = REQUEST_ID_HEADER.encode()
# A client's id is reused only if it is short and plain; anything else could poison logs.
_ACCEPTED = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Put a request id in the request headers before the app sees them, and in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k != _HEADER]
        given = next((v for k, v in scope.get("headers", []) if k == _HEADER), b"")
        request_id = given if _ACCEPTED.match(given) else uuid.uuid4().hex.encode()
        scope = {**scope, "headers": [*headers, (_HEADER, request_id)]}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                message = {**message, "headers": [*out, (_HEADER, request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
