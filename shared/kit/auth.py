"""Bearer tokens: one service token for the routes that change what is served (starting training, reloads,
aliases), and named caller tokens for the prediction routes.

Each service that has such routes keeps its token in its own settings as ``api_token`` (for example
``BT_TRAINING_API_TOKEN``) and puts ``Depends(BearerToken("BT_TRAINING_API_TOKEN"))`` on those routes, with
``responses=AUTH_RESPONSES``. No token configured: the routes are disabled (403 AUTH_DISABLED, naming the
setting), so a service started without one can never be changed anonymously. A missing or wrong token:
401 UNAUTHORIZED with ``WWW-Authenticate: Bearer``. The token is compared in constant time.

Caller tokens (``CallerName``): the service's ``api_tokens`` setting names a file of ``<name> <sha256 of the
token>`` lines (``#`` starts a comment). Unset: the routes take anyone, and the caller is ``anonymous``. Set: a
request needs ``Authorization: Bearer <a listed token>`` (else the same 401), and the caller is that token's name,
which the audit trail records. Only hashes are on disk: a leaked file gives no token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from shared.kit.audit.records import ANONYMOUS
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import ErrorOut

# auto_error=False: a missing header reaches our dependency, which answers in the project's error body.
# The scheme also puts the lock on the route in /docs.
_bearer_scheme = HTTPBearer(auto_error=False, description="The service's API token (its `*_API_TOKEN` setting).")

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "UNAUTHORIZED: the bearer token is missing or wrong."},
    403: {
        "model": ErrorOut,
        "description": "AUTH_DISABLED: the service has no API token configured, so this route is off.",
    },
}


def configured_token(settings: Any) -> str | None:
    """The service's API token, or None when unset or blank (a blank token would accept ``Bearer ``)."""
    token = getattr(settings, "api_token", None)
    value = token.get_secret_value() if isinstance(token, SecretStr) else token
    return value if value and value.strip() else None


class BearerToken:
    """A dependency that lets a request through only with ``Authorization: Bearer <the service's token>``.

    ``setting`` is the environment variable the token is read from; it is named in the 403 so the operator
    knows what to set. The token itself comes from ``app.state.settings.api_token``, the settings the app
    was built with.
    """

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
    ) -> None:
        expected = configured_token(request.app.state.settings)
        if expected is None:
            raise ServiceError(
                ErrorCode.AUTH_DISABLED,
                f"This route is disabled: the service has no API token. Set {self.setting} to enable it.",
            )
        # Compared as bytes: compare_digest refuses non-ASCII str, and a header may carry any byte.
        if not hmac.compare_digest(presented(credentials).encode(), expected.encode()):
            raise unauthorized()


def presented(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The bearer token the request carries ("" without one)."""
    return credentials.credentials if credentials is not None else ""


def unauthorized() -> ServiceError:
    return ServiceError(
        ErrorCode.UNAUTHORIZED,
        "A valid bearer token is required: send 'Authorization: Bearer <token>'.",
        headers={"WWW-Authenticate": "Bearer"},
    )


CALLER_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorOut,
        "description": "UNAUTHORIZED: caller tokens are on (the `API_TOKENS` setting) and the bearer token is "
        "missing or not one of them.",
    },
}

# The callers' scheme, apart from the service token's: the schema of a service without caller tokens drops it.
CALLER_SCHEME = "CallerToken"
_caller_scheme = HTTPBearer(
    auto_error=False, scheme_name=CALLER_SCHEME, description="A caller's token (the service's `*_API_TOKENS` file)."
)

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def token_hash(token: str) -> str:
    """What a caller-tokens file holds for a token: its sha256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_caller_tokens(path: Path) -> dict[str, str]:
    """A caller-tokens file as {token hash: name}; a ValueError names the first bad line (a service refuses to
    start with it)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"the caller-tokens file {path} cannot be read: {type(exc).__name__}") from exc
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or not _NAME.match(parts[0]) or not _SHA256.match(parts[1].lower()):
            raise ValueError(
                f"{path} line {number}: expected '<name> <sha256 of the token, 64 hex digits>' "
                "(name: letters, digits, . _ @ -)"
            )
        name, digest = parts[0], parts[1].lower()
        if digest in tokens or name in tokens.values():
            raise ValueError(f"{path} line {number}: the name or the token hash is listed twice")
        tokens[digest] = name
    if not tokens:
        raise ValueError(f"{path} lists no token: leave the setting unset to take anonymous callers")
    return tokens


def caller_name(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_caller_scheme)],
) -> str:
    """The dependency of the prediction routes: the caller's name, ``anonymous`` when caller tokens are off; 401
    when they are on and the request's token is missing or not listed. The table is ``app.state.caller_tokens``
    ({token hash: name}, read from the ``api_tokens`` file when the app was built)."""
    tokens: dict[str, str] | None = getattr(request.app.state, "caller_tokens", None)
    if tokens is None:
        return ANONYMOUS
    given = token_hash(presented(credentials))
    found = None
    for digest, name in tokens.items():  # every entry compared: the time does not tell which one matched
        if hmac.compare_digest(given, digest):
            found = name
    if found is None or not presented(credentials):
        raise unauthorized()
    return found


CallerName = Annotated[str, Depends(caller_name)]


class CallerTokenSettings(BaseSettings):
    """The ``api_tokens`` field of a service whose prediction routes may require named callers."""

    api_tokens: Path | None = Field(
        None,
        description="A file of '<name> <sha256 of the token>' lines: the prediction routes then require "
        "'Authorization: Bearer <token>' (401 otherwise) and the audit trail records the token's name. Unset: "
        "anonymous callers (fit for loopback only).",
    )

    @field_validator("api_tokens")
    @classmethod
    def readable_tokens(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_caller_tokens(value)  # a missing or malformed file stops the service at start-up
        return value

    def caller_tokens(self) -> dict[str, str] | None:
        """{token hash: name}, or None when caller tokens are off."""
        return read_caller_tokens(self.api_tokens) if self.api_tokens is not None else None


def install_caller_tokens(app: FastAPI, settings: CallerTokenSettings) -> None:
    """Read the settings' caller tokens into the app (``caller_name`` checks them). Without tokens, the schema
    says so: the routes' caller scheme and their 401 are dropped, since no request can get one."""
    app.state.caller_tokens = settings.caller_tokens()
    if app.state.caller_tokens is not None:
        return
    build = app.openapi

    def openapi_without_callers() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    security = operation.get("security", [])
                    if not any(CALLER_SCHEME in requirement for requirement in security):
                        continue
                    kept = [requirement for requirement in security if CALLER_SCHEME not in requirement]
                    if kept:
                        operation["security"] = kept
                    else:
                        operation.pop("security")
                    operation.get("responses", {}).pop("401", None)
            schema.get("components", {}).get("securitySchemes", {}).pop(CALLER_SCHEME, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_without_callers  # type: ignore[method-assign]
