"""A POST on a raw socket that stops sending as soon as the server answers: what an oversized upload costs the
server can be measured by how much of it was sent (tests of the services' and nginx's body limits)."""

from __future__ import annotations

import json
import select
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class RawAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    body_bytes_sent: int


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body[:length] or b"{}")


def send_raw(
    url: str,
    path: str,
    headers: dict[str, str],
    body_bytes: int,
    chunked: bool,
    prefix: bytes = b"",
    timeout_s: float = 10.0,
    suffix: bytes | None = None,
) -> RawAnswer:
    """POST ``prefix`` then zeros, ``body_bytes`` in all, stopping as soon as the server answers or stops reading;
    returns the answer and how many body bytes were sent before it."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {body_bytes}\r\n"
    sent = 0
    piece = b"\x00" * 65536
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}{framing}\r\n".encode())
        if prefix:
            sock.sendall(b"%x\r\n%s\r\n" % (len(prefix), prefix) if chunked else prefix)
            sent += len(prefix)
        try:
            while sent < body_bytes and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if suffix is not None and sent >= body_bytes:  # the whole body: ``suffix`` and, chunked, the last chunk
                sock.sendall((b"%x\r\n%s\r\n0\r\n\r\n" % (len(suffix), suffix)) if chunked else suffix)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading: its answer is waiting
        status, answer_headers, body = _read_answer(sock)
    return RawAnswer(status, body, answer_headers, sent)
