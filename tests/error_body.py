"""The one check of the services' JSON error body, shared by the route tests."""

from __future__ import annotations

from typing import Any


def error_body(response: Any, status: int, code: str, *, request_id: bool = False) -> dict[str, Any]:
    """The `error` object of a response, after checking the status, the stable body shape, the symbolic
    code and a message; with `request_id`, also that the body names the request id of the header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if request_id:
        assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]
