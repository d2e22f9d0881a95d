"""Bearer-token guard for the routes that change what is served (starting training, reloads, aliases).

Each service that has such routes keeps its token in its own settings as ``api_token`` (for example
``BT_TRAINING_API_TOKEN``) and puts ``Depends(BearerToken("BT_TRAINING_API_TOKEN"))`` on those routes, with
``responses=AUTH_RESPONSES``. No token configured: the routes are disabled (403 AUTH_DISABLED, naming the
setting), so a service started without one can never be changed anonymously. A missing or wrong token:
401 UNAUTHORIZED with ``WWW-Authenticate: Bearer``. The token is compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

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
        given = credentials.credentials if credentials is not None else ""
        # Compared as bytes: compare_digest refuses non-ASCII str, and a header may carry any byte.
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ServiceError(
                ErrorCode.UNAUTHORIZED,
                "A valid bearer token is required: send 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
