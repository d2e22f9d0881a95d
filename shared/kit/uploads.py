"""Bounded reading of request bodies and uploaded image files, for every service.

Two guards: a middleware that counts a request's body bytes as they arrive (with or without a Content-Length:
a chunked upload is counted the same) and answers 413 as soon as they pass the limit, so nothing beyond the
limit is read, parsed or spooled to disk; and ``read_upload`` that never reads past one file's limit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, Request, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kit.errors import ErrorCode, ServiceError, error_response

# Room for the multipart boundaries, part headers and small form fields around the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def too_large(max_bytes: int) -> ServiceError:
    """The FILE_TOO_LARGE error, saying what is accepted (never what was sent)."""
    mib = max_bytes / 1_048_576
    return ServiceError(
        ErrorCode.FILE_TOO_LARGE,
        f"The uploaded file is too large; at most {max_bytes} bytes ({mib:.1f} MiB) are accepted.",
        {"max_bytes": max_bytes},
    )


def body_too_large(max_bytes: int) -> ServiceError:
    """FILE_TOO_LARGE for a request body that is not a file upload (e.g. JSON options)."""
    return ServiceError(
        ErrorCode.FILE_TOO_LARGE,
        f"The request body is too large; at most {max_bytes} bytes are accepted.",
        {"max_bytes": max_bytes},
    )


async def read_body(request: Request, max_bytes: int, error: ServiceError | None = None) -> bytearray:
    """A raw request body, or ``error`` (by default FILE_TOO_LARGE) as soon as it holds more than ``max_bytes``:
    a declared length is checked before anything is read, a chunked body is counted as it arrives."""
    error = error or too_large(max_bytes)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise error
    # One growing buffer, not a list of chunks joined at the end (nor copied into bytes): held once, not twice.
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > max_bytes:
            raise error
        body += chunk
    return body


async def read_upload(file: UploadFile, max_bytes: int, error: ServiceError | None = None) -> bytes:
    """The file's bytes, or ``error`` (default FILE_TOO_LARGE) when it holds more than ``max_bytes``."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error or too_large(max_bytes)
    return data


async def read_uploads(files: list[UploadFile], max_files: int, max_bytes: int) -> list[bytes | ServiceError]:
    """Each file's bytes, or its own FILE_TOO_LARGE (one oversize file does not fail the others); more
    than ``max_files`` files is INVALID_REQUEST before any is read."""
    if len(files) > max_files:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"At most {max_files} files are accepted in one batch; got {len(files)}: send fewer.",
            {"max_files": max_files},
        )
    read: list[bytes | ServiceError] = []
    for file in files:
        try:
            read.append(await read_upload(file, max_bytes))
        except ServiceError as exc:
            read.append(exc)
        finally:
            await file.close()
    return read


class CutShortAnswer:
    """An app run whose body reading a wrapper may cut short (``cut``: over a limit, past a deadline). Once cut,
    the app's answer to the failed read is dropped and ``error`` is sent in its place, unless the app had started
    answering already (then its answer stands)."""

    def __init__(self, send: Send) -> None:
        self.cut = False
        self.started = False
        self._send = send

    async def send(self, message: Message) -> None:
        if self.cut and not self.started:
            return  # the app's answer to a body it could not finish reading: ``error`` replaces it
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)

    async def run(
        self, app: ASGIApp, scope: Scope, cut_receive: Receive, receive: Receive, error: ServiceError
    ) -> None:
        """Run ``app`` with ``cut_receive``; if the body was cut short, answer ``error`` (``receive``: the raw one)."""
        try:
            await app(scope, cut_receive, self.send)
        except Exception:
            # Whatever the failed read became on its way out (a parse error, the exception itself).
            if not self.cut or self.started:
                raise
        if self.cut and not self.started:
            await error_response(Request(scope), error)(scope, receive, self._send)


class _BodyOverLimit(Exception):
    """Raised into the app by the counting ``receive`` once the body passes the limit."""


async def forward_within_limit(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, max_bytes: int, error: ServiceError
) -> None:
    """Run ``app`` on an HTTP request whose body may hold at most ``max_bytes``; beyond that, ``error`` (a 413).

    A declared Content-Length above the limit is refused before the app runs. Otherwise the body is counted
    as it is received: once past the limit the app's next read fails, whatever the app answers to that is
    dropped, and ``error`` is sent instead (the connection is then closed by the server, the rest unread).
    """
    declared = dict(scope.get("headers") or []).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > max_bytes:
        await error_response(Request(scope), error)(scope, receive, send)
        return
    answer = CutShortAnswer(send)
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        if answer.cut:
            raise _BodyOverLimit
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                answer.cut = True
                raise _BodyOverLimit
        return message

    await answer.run(app, scope, counting_receive, receive, error)


class UploadSizeLimit:
    """ASGI middleware: 413 for a request whose body passes ``max_bytes`` plus ``overhead_bytes``, counted as
    it arrives (``forward_within_limit``); by default the overhead is room for the multipart framing around
    one file. Paths ending in one of ``exempt_suffixes`` are left to their handler, which bounds its own body.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt_suffixes: tuple[str, ...] = (),
        overhead_bytes: int = MULTIPART_OVERHEAD_BYTES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_suffixes = exempt_suffixes
        self.limit = max_bytes + overhead_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exempt = bool(self.exempt_suffixes) and str(scope.get("path", "")).endswith(self.exempt_suffixes)
        if scope["type"] != "http" or exempt:
            await self.app(scope, receive, send)
            return
        await forward_within_limit(self.app, scope, receive, send, self.limit, too_large(self.max_bytes))


class RouteBodyLimit:
    """ASGI middleware: 413 for a request to a path ending in ``path_suffix`` whose body passes ``max_bytes``,
    counted as it arrives: for a route exempt from ``UploadSizeLimit`` whose body holds more than one file."""

    def __init__(self, app: ASGIApp, path_suffix: str, max_bytes: int) -> None:
        self.app = app
        self.path_suffix = path_suffix
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).endswith(self.path_suffix):
            error = body_too_large(self.max_bytes)
            await forward_within_limit(self.app, scope, receive, send, self.max_bytes, error)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: 413 for any request whose body passes ``max_bytes`` (for services that take small JSON
    bodies, not uploads), counted as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await forward_within_limit(self.app, scope, receive, send, self.max_bytes, body_too_large(self.max_bytes))


async def get_image_bytes(
    request: Request,
    file: Annotated[UploadFile, File(description="The MRI image (JPEG, PNG, BMP, TIFF..., or a DICOM file).")],
) -> bytes:
    """The uploaded file's bytes, 413 beyond the service's `max_upload_bytes` setting."""
    try:
        return await read_upload(file, request.app.state.settings.max_upload_bytes)
    finally:
        await file.close()


ImageBytes = Annotated[bytes, Depends(get_image_bytes)]
