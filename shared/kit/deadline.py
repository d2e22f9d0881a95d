"""A request's time budget, sent by the caller and honoured by the service that does the work.

The gateway waits a bounded time for inference (``predict_timeout_s``); past it, its client gets UPSTREAM_TIMEOUT
while inference, not told, would go on decoding for nobody. So each call carries its budget
(``x-request-timeout-ms``: milliseconds, relative, so that the two hosts' clocks need not agree), a little less than
the caller's own timeout. The receiving service (``RequestBudgetMiddleware``) turns it into a deadline for the
request and watches whether the client is still connected; blocking work checks both before it starts
(``current_budget().check()``) and waits for a thread or a decode slot only until the work could still finish in
time (``start_by``): beyond that the answer is 503 SERVER_BUSY with Retry-After, which reaches the caller before
its own timeout. A request without the header has no deadline (the services' own limits still apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kit.errors import ErrorCode, ServiceError

BUDGET_HEADER = "x-request-timeout-ms"
# What the caller keeps for itself: the answer's way back, and the margin between its timeout and the budget.
CALLER_MARGIN_S = 0.2
# Work may start while this share of the budget (at least MIN_RESERVE_S) is left: what a decode and a run take.
RESERVE_FRACTION = 0.5
MIN_RESERVE_S = 0.3
# A budget longer than this (or unparsable) is ignored: no deadline rather than a wrong one.
MAX_BUDGET_MS = 3_600_000
BUSY_RETRY_AFTER_S = 1


def budget_headers(timeout_s: float) -> dict[str, str]:
    """The header a caller sends with a call it waits ``timeout_s`` for."""
    return {BUDGET_HEADER: str(max(1, round((timeout_s - CALLER_MARGIN_S) * 1000)))}


def busy(reason: str) -> ServiceError:
    return ServiceError(
        ErrorCode.SERVER_BUSY,
        f"The service is too busy to answer within the request's time budget ({reason}); try again shortly.",
        retry_after_s=BUSY_RETRY_AFTER_S,
    )


@dataclass
class RequestBudget:
    """One request's deadline (monotonic seconds) and whether its client has gone."""

    deadline: float
    total_s: float
    gone: threading.Event = field(default_factory=threading.Event)

    @property
    def start_by(self) -> float:
        """The latest time blocking work may start and still answer before the deadline."""
        return self.deadline - max(MIN_RESERVE_S, RESERVE_FRACTION * self.total_s)

    def wait_s(self, longest: float) -> float:
        """How long to wait for a thread or a slot: ``longest``, cut at ``start_by`` (0 when already past)."""
        return max(0.0, min(longest, self.start_by - time.monotonic()))

    def check(self) -> None:
        """SERVER_BUSY when the client has gone or work started now could not answer in time: drop it."""
        if self.gone.is_set():
            raise busy("the client has gone")
        if time.monotonic() > self.start_by:
            raise busy("its deadline is too close")


_current: contextvars.ContextVar[RequestBudget | None] = contextvars.ContextVar("request_budget", default=None)


def current_budget() -> RequestBudget | None:
    """The budget of the request being served (worker threads started with anyio see it too), or None."""
    return _current.get()


def check_budget() -> None:
    """``current_budget().check()`` when the request has a budget."""
    budget = _current.get()
    if budget is not None:
        budget.check()


def _budget_of(scope: Scope) -> RequestBudget | None:
    value = dict(scope.get("headers") or []).get(BUDGET_HEADER.encode(), b"")
    if not value.isdigit() or not 0 < int(value) <= MAX_BUDGET_MS:
        return None
    total_s = int(value) / 1000
    return RequestBudget(time.monotonic() + total_s, total_s)


class RequestBudgetMiddleware:
    """ASGI middleware: the request's budget as ``current_budget()``, and ``gone`` set when the client disconnects
    before the answer is sent (watched once the body has been read, when nothing else reads from the client)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = _budget_of(scope) if scope["type"] == "http" else None
        if budget is None:
            await self.app(scope, receive, send)
            return
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            message = await receive()  # the server answers http.disconnect when the connection is lost
            if message["type"] == "http.disconnect":
                budget.gone.set()

        async def budget_receive() -> Message:
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False) and watcher is None:
                watcher = asyncio.create_task(watch())
            elif message["type"] == "http.disconnect":
                budget.gone.set()
            return message

        token = _current.set(budget)
        try:
            await self.app(scope, budget_receive, send)
        finally:
            _current.reset(token)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
