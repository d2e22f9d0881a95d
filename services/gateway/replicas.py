"""The inference replicas behind the gateway: which are up, which one takes the next call, and one retry.

Each replica has its own connection pool. A background task asks every replica's ``/readyz`` every
``health_check_interval_s``; a replica whose check fails, or whose connection fails or times out under a
call, is "down" and gets no calls until its ``/readyz`` answers again. Calls go to the up replica with the
fewest calls in flight (ties in turn, so an idle pool is round robin). When every replica is down, calls still
go to all of them: the last check may be stale, and trying is how a lone replica that came back is found
before the next check.

Every call the gateway makes to inference is idempotent (a prediction, a comparison, a batch, the model list:
none changes anything), so a call whose connection fails (refused, reset, or dropped before the answer, as when
a replica is killed mid-request) is sent once more, to another replica when there is one. A timeout is not
retried: the replica is there but slow, and a second try would double the client's wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field

from services.gateway.replica_http import FailureKind, TransportFailure, UpstreamAnswer, exchange
from shared.kit.deadline import budget_headers
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.upstream import (
    READINESS_PATH,
    no_answer,
    parse,
    raise_for_error,
    readiness_body,
    request_headers,
)

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

NOT_CHECKED = "not checked yet"

# Labelled by replica URL: bounded by the gateway's settings, not by clients.
REPLICA_UP = Gauge(
    "bt_gateway_inference_replica_up",
    "1 while the gateway sends calls to this inference replica, 0 while it counts it as down.",
    ["replica"],
    multiprocess_mode="liveall",  # with several gateway workers, each worker's own view (a pid label)
)
RETRIES = Counter(
    "bt_gateway_inference_retries",
    "Calls sent once more, to another replica when there is one, after their connection to this replica failed.",
    ["replica"],
)


class ReplicaStatus(BaseModel):
    """One inference replica as the gateway sees it."""

    url: str = Field(description="The replica's base URL.")
    up: bool = Field(description="True when its last readiness check passed and no call to it failed since.")
    since: datetime = Field(description="When it last went up or down (UTC).")
    reason: str | None = Field(None, description="Why it is down; null when up.")
    in_flight: int = Field(description="Calls the gateway is waiting on from it now.")


@dataclass
class Replica:
    """One inference replica: its connection pool and what the gateway knows of it."""

    url: str
    http: aiohttp.ClientSession
    up: bool = False
    reason: str = NOT_CHECKED
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    in_flight: int = 0
    readiness: dict[str, Any] = field(default_factory=dict)

    def mark(self, up: bool, reason: str = "") -> None:
        """Record a check's or a call's outcome; a change is logged, as it is what an operator looks for."""
        if up != self.up or self.reason == NOT_CHECKED:
            self.since = datetime.now(UTC)
            if up:
                logger.info("inference replica %s is up", self.url)
            else:
                logger.warning("inference replica %s is down: %s", self.url, reason)
        self.up = up
        self.reason = "" if up else reason
        REPLICA_UP.labels(self.url).set(1 if up else 0)

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            url=self.url, up=self.up, since=self.since, reason=self.reason or None, in_flight=self.in_flight
        )


# A short, stable reason for each kind of transport failure (no addresses or tracebacks: /readyz shows it).
FAILURE_REASONS: dict[FailureKind, str] = {
    "timeout": "did not answer in time",
    "refused": "connection refused or unreachable",
    "dropped": "connection dropped before an answer",
}


class ReplicaPool:
    """Spreads calls over the replicas of one service and keeps their up/down state current."""

    def __init__(
        self,
        replicas: list[Replica],
        service: str,
        connect_timeout_s: float,
        check_interval_s: float,
        check_timeout_s: float,
    ) -> None:
        if not replicas:
            raise ValueError("a replica pool needs at least one replica")
        self.replicas = replicas
        self.service = service
        self.connect_timeout_s = connect_timeout_s
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        # A client told to come back after this long finds every replica checked again.
        self.retry_after_s = max(1, math.ceil(check_interval_s + check_timeout_s))
        self._turn = 0

    # -- choosing ----------------------------------------------------------------------------------

    def pick(self, exclude: Replica | None = None) -> Replica:
        """The up replica (other than ``exclude`` when there is another) with the fewest calls in flight."""
        others = [replica for replica in self.replicas if replica is not exclude] or self.replicas
        candidates = [replica for replica in others if replica.up] or others
        self._turn = (self._turn + 1) % len(candidates)
        rotated = candidates[self._turn :] + candidates[: self._turn]
        return min(rotated, key=lambda replica: replica.in_flight)

    def up(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.up]

    def statuses(self) -> list[ReplicaStatus]:
        return [replica.status() for replica in self.replicas]

    # -- calling -----------------------------------------------------------------------------------

    async def _send(
        self, replica: Replica, method: str, path: str, request_id: str | None, timeout_s: float, **kwargs: Any
    ) -> UpstreamAnswer:
        # The replica's time budget: it answers SERVER_BUSY rather than work past this call's timeout.
        headers = {**budget_headers(timeout_s), **(kwargs.pop("headers", None) or {})}
        replica.in_flight += 1
        try:
            return await exchange(
                replica.http,
                method,
                path,
                headers=request_headers(request_id, headers),
                timeout_s=timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                **kwargs,
            )
        except TransportFailure as failure:
            replica.mark(False, FAILURE_REASONS[failure.kind])
            raise
        finally:
            replica.in_flight -= 1

    async def send(
        self, method: str, path: str, request_id: str | None = None, *, timeout_s: float, **kwargs: Any
    ) -> UpstreamAnswer:
        """The answer of one replica; after a connection failure, of a second one (see the module's doc)."""
        replica = self.pick()
        try:
            return await self._send(replica, method, path, request_id, timeout_s, **kwargs)
        except TransportFailure as failure:
            if failure.kind == "timeout":
                raise self._no_answer(method, path, failure) from failure
            first_failure = failure
        retry_on = self.pick(exclude=replica)
        RETRIES.labels(replica.url).inc()
        logger.info("%s %s failed on %s (%r); trying %s", method, path, replica.url, first_failure, retry_on.url)
        try:
            return await self._send(retry_on, method, path, request_id, timeout_s, **kwargs)
        except TransportFailure as failure:
            raise self._no_answer(method, path, failure) from failure

    def _no_answer(self, method: str, path: str, failure: TransportFailure) -> ServiceError:
        return no_answer(self.service, method, path, failure, failure.kind == "timeout", self.retry_after_s)

    async def call(
        self, schema: type[T], method: str, path: str, request_id: str | None = None, *, timeout_s: float, **kwargs: Any
    ) -> T:
        """Send, raise the replica's error if any, parse the answer."""
        response = await self.send(method, path, request_id, timeout_s=timeout_s, **kwargs)
        raise_for_error(response, self.service)
        return parse(response, schema, self.service)

    # -- checking ----------------------------------------------------------------------------------

    async def check(self, replica: Replica) -> None:
        """Ask one replica's ``/readyz`` and record the outcome."""
        try:
            response = await exchange(
                replica.http, "GET", READINESS_PATH, timeout_s=self.check_timeout_s,
                connect_timeout_s=min(self.connect_timeout_s, self.check_timeout_s),
            )  # fmt: skip
            body = readiness_body(response, self.service)
        except TransportFailure as failure:
            replica.mark(False, FAILURE_REASONS[failure.kind])
        except ServiceError as exc:
            replica.mark(False, exc.message)
        else:
            replica.readiness = body
            replica.mark(True)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(replica) for replica in self.replicas))

    async def watch(self) -> None:
        """Check every replica, pause, again, until cancelled (the app's lifespan runs it as a task)."""
        while True:
            await asyncio.sleep(self.check_interval_s)
            await self.check_all()

    def readiness(self) -> dict[str, Any]:
        """The ``/readyz`` answer of the first replica that is up, or UPSTREAM_UNAVAILABLE naming why each is down."""
        up = self.up()
        if up:
            return up[0].readiness
        reasons = "; ".join(f"{replica.url}: {replica.reason}" for replica in self.replicas)
        raise ServiceError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"No {self.service} replica is ready ({reasons}).",
            {"replicas": [status.model_dump(mode="json") for status in self.statuses()]},
            retry_after_s=self.retry_after_s,
        )
