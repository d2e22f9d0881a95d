"""Calling one of our own services over HTTP, the same way from every caller.

Errors the other service answers with keep their code, message and status (so a 404 naming the
models that exist reaches the client unchanged); a service that cannot be reached becomes
UPSTREAM_UNAVAILABLE (503), one that does not answer in time UPSTREAM_TIMEOUT (503), an answer that makes no
sense UPSTREAM_ERROR (502).

Readiness means the same everywhere: a service is ready when its own ``/readyz`` answers 2xx;
``readiness()`` returns that body, or raises UPSTREAM_UNAVAILABLE saying why the service is not ready.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Protocol, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, ValidationError

from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

REQUEST_ID_HEADER = "x-request-id"
READINESS_PATH = "/readyz"
# Where a service re-encodes a file for another (a batch, an explanation), the upstream sees a neutral file name:
# the client's could carry a patient's name. (A forwarded prediction's body goes as it came; inference never reads
# its file name.)
FORWARDED_FILENAME = "upload"


def http_base_url(value: str) -> str:
    """A base URL as the settings take it: trimmed, without a trailing slash, and http:// or https:// only,
    so that a typo stops the service at start-up rather than failing every call."""
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


# A settings field holding one of our services' base URLs (or another URL the services link to).
ServiceUrl = Annotated[str, AfterValidator(http_base_url)]


class UpstreamError(ServiceError):
    """An error answered by an upstream service, passed on with that service's status."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None, status: int,
        retry_after_s: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(code, message, details, retry_after_s=retry_after_s)
        self._status = status

    @property
    def status(self) -> int:
        return self._status


def request_headers(request_id: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's own headers plus the request id, so the services' logs share it."""
    headers = dict(extra or {})
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


def transport_failure(
    service: str, method: str, path: str, exc: httpx.HTTPError, retry_after_s: int | None = None
) -> ServiceError:
    """UPSTREAM_TIMEOUT when the service took too long to answer, UPSTREAM_UNAVAILABLE when it could not be
    reached; both 503 with ``Retry-After`` (``retry_after_s``, else the default)."""
    timed_out = isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout)
    return no_answer(service, method, path, exc, timed_out, retry_after_s)


def no_answer(
    service: str, method: str, path: str, cause: BaseException, timed_out: bool, retry_after_s: int | None = None
) -> ServiceError:
    """``transport_failure`` for any HTTP client: ``timed_out`` says whether the service was reached but slow."""
    if timed_out:
        logger.warning("%s %s %s timed out: %r", service, method, path, cause)
        return ServiceError(
            ErrorCode.UPSTREAM_TIMEOUT,
            f"The {service} service did not answer in time; try again.",
            retry_after_s=retry_after_s,
        )
    logger.warning("%s service unreachable for %s %s: %r", service, method, path, cause)
    return ServiceError(
        ErrorCode.UPSTREAM_UNAVAILABLE,
        f"The {service} service is unavailable; try again shortly.",
        retry_after_s=retry_after_s,
    )


class HttpAnswer(Protocol):
    """What is read of an upstream's answer: an ``httpx.Response``, or the gateway's ``UpstreamAnswer``."""

    @property
    def status_code(self) -> int: ...

    @property
    def is_success(self) -> bool: ...

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


def raise_for_error(response: HttpAnswer, service: str) -> None:
    """Nothing for a 2xx answer; otherwise the upstream's own error, or UPSTREAM_ERROR without a usable body."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code = ErrorCode(error["code"])
        message = str(error["message"])
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("%s answered %s without an error body", service, response.status_code)
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR,
            f"The {service} service failed with HTTP {response.status_code} and no usable error body.",
        ) from exc
    details = error.get("details") if isinstance(error.get("details"), dict) else None
    raise UpstreamError(code, message, details, response.status_code, _retry_after_s(response))


def _retry_after_s(response: HttpAnswer) -> int | None:
    """The upstream's own ``Retry-After`` in seconds (passed on with its 503), when it gave a usable one."""
    value = response.headers.get("retry-after", "").strip()
    return int(value) if value.isdigit() and 0 < int(value) <= 3600 else None


def parse(response: HttpAnswer, schema: type[T], service: str) -> T:
    """The answer as ``schema``, or UPSTREAM_ERROR."""
    try:
        return schema.model_validate_json(response.content)
    except ValidationError as exc:
        logger.warning("%s answered a body that is not a %s: %s", service, schema.__name__, exc)
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR, f"The {service} service answered with an unexpected body."
        ) from exc


def readiness_body(response: HttpAnswer, service: str) -> dict[str, Any]:
    """The JSON object of a 2xx ``/readyz`` answer; anything else is UPSTREAM_UNAVAILABLE saying why, so
    a caller's own readiness fails with 503 whatever the upstream answered."""
    try:
        raise_for_error(response, service)
    except ServiceError as exc:
        raise ServiceError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"The {service} service is not ready: {exc.message}",
            {"upstream_code": exc.code.value},
        ) from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServiceError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"The {service} service is not ready: its {READINESS_PATH} answer is not a JSON object.",
        )
    return body


def _timeout_option(timeout_s: float | None) -> dict[str, float]:
    # Omitted rather than None: httpx reads timeout=None as "wait forever".
    return {} if timeout_s is None else {"timeout": timeout_s}


class AsyncServiceClient:
    """Calls to one service over a shared ``httpx.AsyncClient``; every failure is a ServiceError."""

    def __init__(self, http: httpx.AsyncClient, service: str) -> None:
        self.http = http
        self.service = service

    async def send(self, method: str, path: str, request_id: str | None = None, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(
                method, path, headers=request_headers(request_id, kwargs.pop("headers", None)), **kwargs
            )
        except httpx.HTTPError as exc:
            raise transport_failure(self.service, method, path, exc) from exc

    async def call(self, schema: type[T], method: str, path: str, request_id: str | None = None, **kwargs: Any) -> T:
        """Send, raise the upstream's error if any, parse the answer."""
        response = await self.send(method, path, request_id, **kwargs)
        raise_for_error(response, self.service)
        return parse(response, schema, self.service)

    async def readiness(self, request_id: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """The service's ``/readyz`` body, or UPSTREAM_UNAVAILABLE; ``timeout_s`` overrides the client's."""
        response = await self.send("GET", READINESS_PATH, request_id, **_timeout_option(timeout_s))
        return readiness_body(response, self.service)


class ServiceClient:
    """The same over a blocking ``httpx.Client``, for callers that run in worker threads."""

    def __init__(self, http: httpx.Client, service: str) -> None:
        self.http = http
        self.service = service

    def send(self, method: str, path: str, request_id: str | None = None, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(
                method, path, headers=request_headers(request_id, kwargs.pop("headers", None)), **kwargs
            )
        except httpx.HTTPError as exc:
            raise transport_failure(self.service, method, path, exc) from exc

    def call(self, schema: type[T], method: str, path: str, request_id: str | None = None, **kwargs: Any) -> T:
        response = self.send(method, path, request_id, **kwargs)
        raise_for_error(response, self.service)
        return parse(response, schema, self.service)

    def readiness(self, request_id: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """The service's ``/readyz`` body, or UPSTREAM_UNAVAILABLE; ``timeout_s`` overrides the client's."""
        response = self.send("GET", READINESS_PATH, request_id, **_timeout_option(timeout_s))
        return readiness_body(response, self.service)
