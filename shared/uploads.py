"""Bounded reading of uploaded image files, for every service that accepts one.

Two guards: a middleware that refuses a request whose declared length is already too large,
before the multipart body is spooled, and ``read_upload`` that never reads past the limit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, Request, UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ErrorCode, ServiceError, error_response

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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """A raw request body, or FILE_TOO_LARGE as soon as it holds more than ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, or FILE_TOO_LARGE when it holds more than ``max_bytes``."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(max_bytes)
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


class UploadSizeLimit:
    """ASGI middleware: 413 for a request whose Content-Length exceeds the limit plus multipart overhead.

    Paths ending in one of ``exempt_suffixes`` are left to their handler, which bounds its own body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_suffixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_suffixes = exempt_suffixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exempt = bool(self.exempt_suffixes) and str(scope.get("path", "")).endswith(self.exempt_suffixes)
        if scope["type"] == "http" and not exempt:
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes + MULTIPART_OVERHEAD_BYTES:
                response = error_response(Request(scope), too_large(self.max_bytes))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def get_image_bytes(
    request: Request,
    file: Annotated[UploadFile, File(description="The MRI image (JPEG, PNG, BMP, TIFF...).")],
) -> bytes:
    """The uploaded file's bytes, 413 beyond the service's `max_upload_bytes` setting."""
    try:
        return await read_upload(file, request.app.state.settings.max_upload_bytes)
    finally:
        await file.close()


ImageBytes = Annotated[bytes, Depends(get_image_bytes)]
