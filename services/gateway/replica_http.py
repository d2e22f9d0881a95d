"""One HTTP exchange with an inference replica, over aiohttp: the gateway's hot path.

Every prediction the gateway forwards is one such exchange. aiohttp's client costs a quarter of the CPU httpx's
takes per call (0.15 against 0.61 ms on this machine, docs/benchmarks.md), so the replicas are called with it;
the explainer, called rarely and for seconds, keeps the services' common httpx client (``shared.kit.upstream``).
A transport failure is one ``TransportFailure`` saying what happened, for the pool to mark, retry or answer 503.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

# Idle seconds a connection is kept for reuse: below uvicorn's 5 s keep-alive timeout (shared.kit.service).
KEEPALIVE_S = 4.0

FailureKind = Literal["refused", "timeout", "dropped"]


@dataclass(frozen=True)
class UpstreamAnswer:
    """A replica's answer, read whole: what ``shared.kit.upstream`` reads of an answer (status, headers, body)."""

    status_code: int
    headers: dict[str, str]  # names lower-cased
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.content)


class TransportFailure(Exception):
    """No answer: the connection was refused (or not made in time), the answer was too slow, or the connection
    broke before it."""

    def __init__(self, kind: FailureKind, cause: BaseException) -> None:
        super().__init__(f"{kind}: {cause!r}")
        self.kind = kind


def new_session(base_url: str, max_connections: int) -> aiohttp.ClientSession:
    """A connection pool to one replica, for the life of the app (an async context manager)."""
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_S)
    # Calls between our own services never go through a proxy taken from the environment.
    return aiohttp.ClientSession(base_url=base_url, connector=connector, trust_env=False, auto_decompress=False)


async def exchange(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    timeout_s: float,
    connect_timeout_s: float,
    params: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> UpstreamAnswer:
    """Send one request and read its whole answer, or raise ``TransportFailure``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
    try:
        async with session.request(
            method, path, params=params, data=content, headers=headers, timeout=timeout
        ) as response:
            body = await response.read()
            return UpstreamAnswer(response.status, {k.lower(): v for k, v in response.headers.items()}, body)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise TransportFailure("refused", exc) from exc
    except TimeoutError as exc:
        raise TransportFailure("timeout", exc) from exc
    except aiohttp.ClientError as exc:  # disconnected, reset, a malformed answer
        raise TransportFailure("dropped", exc) from exc
