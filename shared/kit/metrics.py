"""Prometheus metrics every service shares: HTTP request counts and latencies, and ``GET /metrics``.

Labels are bounded so a client cannot grow the series without end: the route is the matched route's
template (``/v1/models/{model}/predict``, never the raw path; ``unmatched`` for a request answered
before any route took it: an unknown path, or a refusal by a middleware such as the upload limit's 413),
the method is one of the HTTP methods or ``other``, the status is the numeric code. ``/metrics`` itself
is not counted, so a scrape does not change what it reads.

Series live in prometheus-client's default registry, one per process; a service run with several worker
processes sums its workers' series (``shared.kit.workers``). Prometheus adds the ``job``/``instance`` labels that
tell the services apart, so there is no ``service`` label here.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kit.workers import metrics_shared_between_workers

METRICS_PATH = "/metrics"
UNMATCHED_ROUTE = "unmatched"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# From 1 ms (an inference call on loopback) to a minute (a LIME explanation on a busy machine).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "bt_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "bt_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method, route template and status.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)


# prometheus-client's labels() takes a lock and builds a key on every call (about 8 us each here); the
# label values are bounded, so each combination's children are looked up once and kept.
_SERIES: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def _series_for(method: str, route: str, status: str) -> tuple[Counter, Histogram]:
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES.setdefault(key, (HTTP_REQUESTS.labels(*key), HTTP_REQUEST_SECONDS.labels(*key)))
    return series


def route_template(scope: Scope) -> str:
    """The path template of the route that took the request, which the router leaves in the scope
    (a method mismatch still names it); ``unmatched`` when it was answered before any route took it."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class HttpMetrics:
    """ASGI middleware: count and time every HTTP request by method, route template and status.

    The route is read after the app answered, when the router has put it in the scope. A request
    that ends in an unhandled exception is counted as 500, what the client receives.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        if route == METRICS_PATH:
            return
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
        count, latency = _series_for(method, route, str(status))
        count.inc()
        latency.observe(seconds)


async def read_metrics(request: Request) -> Response:
    """Every series of this process (of all worker processes, when there are several: ``shared.kit.workers``), in the
    format the scraper asks for (Prometheus text by default)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    registry = REGISTRY
    if metrics_shared_between_workers():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(encode(registry), media_type=content_type)


def install_metrics(app: FastAPI) -> None:
    """Add ``GET /metrics`` (left out of the OpenAPI schema: it is for the scraper, not the public API)
    and the request middleware. Call it after the other middleware, so its answers (a 413 from the
    upload limit) are counted too."""
    app.add_api_route(METRICS_PATH, read_metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(HttpMetrics)
