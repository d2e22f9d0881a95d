"""The gateway as the stack runs it, one worker process per core: every worker answers, and ``/metrics`` of any
worker counts the requests all of them answered (prometheus-client's multiprocess mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from shared.kit.workers import usable_cpus
from tests.prometheus_samples import parse, value

REQUESTS = 24


def _workers(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _served(url: str) -> float:
    response = httpx.get(f"{url}/metrics", timeout=10, trust_env=False)
    assert response.status_code == 200
    return value(parse(response.text), "bt_http_requests_total", method="GET", route="/healthz", status="200")


def test_every_worker_answers_and_metrics_add_up(gateway_server: Any) -> None:
    # Under uvicorn's supervisor: multiprocessing's resource tracker and the workers; one worker runs in-process.
    expected = usable_cpus() + 1 if usable_cpus() > 1 else 0
    assert len(_workers(gateway_server.process.pid)) == expected
    before = _served(gateway_server.url)
    for _ in range(REQUESTS):  # a new connection each: the kernel spreads them over the workers
        assert httpx.get(f"{gateway_server.url}/healthz", timeout=10, trust_env=False).status_code == 200
    assert _served(gateway_server.url) - before == REQUESTS
