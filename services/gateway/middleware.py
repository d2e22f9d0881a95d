"""Request ids: every request gets one (the client's ``x-request-id`` or a new one), echoed back; and the
bound on a batch's body, which holds several files and so is exempt from the one-file upload limit."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.uploads import MULTIPART_OVERHEAD_BYTES, forward_within_limit
from shared.kit.upstream import REQUEST_ID_HEADER

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


class BatchBodyLimit:
    """ASGI middleware: 413 for a request to a path ending in ``path_suffix`` whose body exceeds ``max_files``
    files of ``max_file_bytes`` each plus multipart overhead, counted as it arrives (``forward_within_limit``)."""

    def __init__(self, app: ASGIApp, path_suffix: str, max_files: int, max_file_bytes: int) -> None:
        self.app = app
        self.path_suffix = path_suffix
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.max_bytes = max_files * max_file_bytes + MULTIPART_OVERHEAD_BYTES

    def _too_large(self) -> ServiceError:
        return ServiceError(
            ErrorCode.FILE_TOO_LARGE,
            f"The batch is too large: at most {self.max_files} files of at most {self.max_file_bytes} bytes each "
            f"({self.max_bytes} bytes in all, with the multipart framing) are accepted; send fewer or smaller files.",
            {"max_bytes": self.max_bytes, "max_files": self.max_files, "max_file_bytes": self.max_file_bytes},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).endswith(self.path_suffix):
            # Counted as the bytes arrive, so a chunked body (no Content-Length) is bounded too.
            await forward_within_limit(self.app, scope, receive, send, self.max_bytes, self._too_large())
            return
        await self.app(scope, receive, send)
