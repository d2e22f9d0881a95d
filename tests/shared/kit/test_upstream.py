"""Readiness of one of our services, seen by a caller: the same rule for the blocking and async clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.service import internal_async_client, internal_client
from shared.kit.upstream import (
    AsyncServiceClient,
    ServiceClient,
    UpstreamError,
    http_base_url,
    raise_for_error,
    readiness_body,
)


def _blocking_readiness(url: str) -> dict[str, Any]:
    with internal_client(url, timeout_s=30.0, connect_timeout_s=3.0) as http:
        return ServiceClient(http, "inference").readiness("probe-1")


def _async_readiness(url: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        async with internal_async_client(url, timeout_s=30.0, connect_timeout_s=3.0) as http:
            return await AsyncServiceClient(http, "inference").readiness("probe-2", timeout_s=5.0)

    return asyncio.run(probe())


PROBES = [_blocking_readiness, _async_readiness]


@pytest.mark.parametrize("probe", PROBES)
def test_a_ready_service_answers_its_readyz_body(inference_server: Any, probe: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            body = probe(inference_server.url)
            break
        except ServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert body["status"] == "ready"


@pytest.mark.parametrize("probe", PROBES)
def test_another_service_at_the_address_is_not_ready(mlflow_server: Any, probe: Any) -> None:
    with pytest.raises(ServiceError) as caught:
        probe(mlflow_server.url)
    assert caught.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert caught.value.status == 503
    assert caught.value.message.startswith("The inference service is not ready: ")
    assert caught.value.details == {"upstream_code": "UPSTREAM_ERROR"}


@pytest.mark.parametrize("probe", PROBES)
def test_nothing_at_the_address_is_unavailable(unused_url: str, probe: Any) -> None:
    with pytest.raises(ServiceError) as caught:
        probe(unused_url)
    assert caught.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert "inference service is unavailable" in caught.value.message


def test_a_not_ready_answer_keeps_the_upstream_reason() -> None:
    answer = httpx.Response(
        503, json={"error": {"code": "MODEL_NOT_READY", "message": "The default models are still being loaded."}}
    )
    with pytest.raises(ServiceError) as caught:
        readiness_body(answer, "inference")
    assert caught.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert caught.value.message == "The inference service is not ready: The default models are still being loaded."
    assert caught.value.details == {"upstream_code": "MODEL_NOT_READY"}


@pytest.mark.parametrize("answer", [httpx.Response(200, text="<html>ok</html>"), httpx.Response(200, json=["ready"])])
def test_a_2xx_that_is_not_a_readiness_object_is_not_ready(answer: httpx.Response) -> None:
    with pytest.raises(ServiceError) as caught:
        readiness_body(answer, "explainer")
    assert caught.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert "explainer service is not ready" in caught.value.message


def test_a_readiness_object_is_returned_as_is() -> None:
    body = {"status": "ready", "models": ["rf/1"]}
    assert readiness_body(httpx.Response(200, json=body), "inference") == body


def test_base_urls_are_trimmed_and_need_a_scheme() -> None:
    assert http_base_url(" http://inference:8001/ ") == "http://inference:8001"
    assert http_base_url("https://explainer.internal") == "https://explainer.internal"
    for bad in ("inference:8001", "ftp://inference", ""):
        with pytest.raises(ValueError, match="expected an http:// or https:// URL"):
            http_base_url(bad)


@pytest.mark.parametrize(("header", "expected"), [("7", 7), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("0", None)])
def test_an_upstream_503_keeps_its_own_retry_after(header: str, expected: int | None) -> None:
    answer = httpx.Response(
        503,
        json={"error": {"code": "SERVER_BUSY", "message": "Too many requests are being decoded."}},
        headers={"Retry-After": header},
    )
    with pytest.raises(UpstreamError) as caught:
        raise_for_error(answer, "inference")
    assert (caught.value.status, caught.value.code) == (503, ErrorCode.SERVER_BUSY)
    assert caught.value.retry_after_s == expected  # None: the caller's default Retry-After is sent instead
