"""An upload the gateway forwards as it came: the request's body (bounded by the upload-limit middleware as it
arrives) and its content type; and the OpenAPI description of that body, which FastAPI cannot derive from a
handler that reads the raw request.

The body is not parsed, except in the one case where the gateway's own file limit needs it: a body larger than
``max_upload_bytes`` (within the middleware's room for multipart framing) has its parts measured, without copying
them, by python-multipart's streaming parser; a part above the limit is 413 FILE_TOO_LARGE here. Anything else a
malformed body holds is the inference service's to refuse.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from shared.kit.uploads import too_large

JSON = "application/json"


@dataclass(frozen=True)
class ForwardedBody:
    content: bytes
    content_type: str


def largest_part_bytes(body: bytes, content_type: str) -> int:
    """The size of the largest part of a multipart body (0 when it is not one, or its framing is broken)."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return 0
    sizes = [0]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        sizes[-1] += end - start

    parser = MultipartParser(boundary, {"on_part_begin": lambda: sizes.append(0), "on_part_data": on_part_data})
    try:
        parser.write(body)
    except MultipartParseError:
        return 0
    return max(sizes)


class _PartHasher:
    """python-multipart's callbacks that hash the data of the first part named ``field``."""

    def __init__(self, field: str) -> None:
        self.wanted = field.encode()
        self.digest: str | None = None
        self.on_part_begin()

    def on_part_begin(self) -> None:
        self.header, self.value, self.name, self.hash = b"", b"", None, hashlib.sha256()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.name = parse_options_header(self.value)[1].get(b"name")
        self.header, self.value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.hash.update(data[start:end])

    def on_part_end(self) -> None:
        if self.name == self.wanted and self.digest is None:
            self.digest = self.hash.hexdigest()

    def callbacks(self) -> dict[str, Any]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_part_data", "on_part_end")
        return {name: getattr(self, name) for name in names}


def part_sha256(body: bytes, content_type: str, field: str) -> str | None:
    """The sha256 of the multipart part named ``field`` (the uploaded file's bytes, what the audit trail records);
    None when the body is not multipart or holds no such part (inference refuses it then)."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return None
    hasher = _PartHasher(field)
    try:
        MultipartParser(boundary, hasher.callbacks()).write(body)
    except MultipartParseError:
        return None
    return hasher.digest


async def read_forwarded_body(request: Request) -> ForwardedBody:
    """The body and its content type; 413 when one of its parts is larger than the gateway's upload limit."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    limit = request.app.state.settings.max_upload_bytes
    if len(body) > limit and largest_part_bytes(body, content_type) > limit:
        raise too_large(limit)
    return ForwardedBody(body, content_type)


ForwardedUpload = Annotated[ForwardedBody, Depends(read_forwarded_body)]


def json_passthrough(content: bytes) -> Response:
    """An upstream's JSON answer, as it came."""
    return Response(content, media_type=JSON)


def multipart_upload(field: str, description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required multipart body with one file field."""
    schema = {
        "type": "object",
        "required": [field],
        "properties": {field: {"type": "string", "format": "binary", "description": description}},
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
