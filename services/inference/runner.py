"""Running a servable's batch: in a worker thread, or with dynamic batching, where concurrent requests for
one model version share one run.

One ``Batcher`` per loaded servable keeps the waiting tensors and a collector task. The collector
takes the oldest waiting request, lets others join until that request has waited ``window_s`` or the
batch holds ``max_batch`` images, runs the model once in a worker thread and hands each request its
own rows. Requests that arrived while the previous run was busy go out at once, so a lone request
never pays more than the window, and under load batches form on their own. Decoding stays per
request, in the worker threads of the route; only the run is shared. One run per model version at a
time is also what sizes the onnxruntime threads (``Settings.session_threads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np
from anyio import CapacityLimiter

from services.inference.metrics import QUEUE_WAIT_SECONDS
from services.inference.servable import Servable
from shared.kit.deadline import busy, current_budget
from shared.kit.errors import ErrorCode, ServiceError

# What a request prepares for its run: the servable and its batch first, then whatever the answer needs.
PreparedT = TypeVar("PreparedT", bound=tuple[Any, ...])
ResultT = TypeVar("ResultT")


def check_tensor(servable: Servable, tensor: np.ndarray) -> None:
    """INVALID_REQUEST unless the batch is float32 (N >= 1, the servable's input shape): one malformed batch
    must fail its own request, not the batch it would have joined."""
    expected = servable.input_shape
    if tensor.dtype != np.float32 or tensor.shape[1:] != expected or len(tensor) == 0:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"Model {servable.key} takes float32 tensors of shape (N, {', '.join(map(str, expected))}) with "
            f"N >= 1; got {tensor.dtype} {tuple(tensor.shape)}.",
        )


@dataclass
class _Waiting:
    tensor: np.ndarray
    future: asyncio.Future[np.ndarray]
    arrived: float


class Batcher:
    """Coalesces the tensors of concurrent requests for one servable into shared runs."""

    def __init__(
        self, servable: Servable, *, window_s: float, max_batch: int, max_queue: int,
        limiter: CapacityLimiter | None = None,
    ) -> None:  # fmt: skip
        self.servable = servable
        self.limiter = limiter
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.runs = 0
        self._waiting: deque[_Waiting] = deque()
        self._waiting_images = 0
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._queue_wait = QUEUE_WAIT_SECONDS.labels(servable.name, servable.version)

    async def predict(self, tensor: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for a model input tensor (N, ...), computed with whoever else is waiting."""
        check_tensor(self.servable, tensor)
        if self._waiting_images + len(tensor) > self.max_queue:
            raise ServiceError(
                ErrorCode.MODEL_NOT_READY,
                f"Model {self.servable.key} has {self._waiting_images} images waiting, at most {self.max_queue} "
                "may wait: retry shortly.",
                {"max_queue": self.max_queue},
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(tensor, future, time.perf_counter()))
        self._waiting_images += len(tensor)
        self._arrived.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect(), name=f"batcher {self.servable.key}")
        return await future

    async def _collect(self) -> None:
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            await self._let_others_join()
            # The batch is taken once a thread may run it: whoever arrives while the run waits for its turn joins.
            async with self.limiter or contextlib.nullcontext():
                await self._run(self._take_batch())

    async def _let_others_join(self) -> None:
        deadline = self._waiting[0].arrived + self.window_s
        while self._waiting_images < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Waiting]:
        # The first request always goes, even one larger than max_batch on its own.
        batch = [self._waiting.popleft()]
        images = len(batch[0].tensor)
        while self._waiting and images + len(self._waiting[0].tensor) <= self.max_batch:
            batch.append(self._waiting.popleft())
            images += len(batch[-1].tensor)
        self._waiting_images -= images
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        for waiting in batch:
            self._queue_wait.observe(started - waiting.arrived)
        tensor = batch[0].tensor if len(batch) == 1 else np.concatenate([waiting.tensor for waiting in batch])
        self.runs += 1
        try:
            rows = await anyio.to_thread.run_sync(self.servable.predict, tensor)
        except Exception as exc:  # whatever the run raised is every waiter's answer
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        start = 0
        for waiting in batch:
            end = start + len(waiting.tensor)
            if not waiting.future.done():  # a client that went away has cancelled its future
                waiting.future.set_result(rows[start:end])
            start = end

    async def close(self) -> None:
        """Stop the collector; requests still waiting are told the model is not ready."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(
                    ServiceError(ErrorCode.MODEL_NOT_READY, f"Model {self.servable.key} is shutting down.")
                )
        self._waiting_images = 0


class Runner:
    """What the data plane calls to run a servable's batch: batched per model version when enabled, recorded
    either way."""

    def __init__(
        self, *, batching: bool, window_s: float, max_batch: int, max_queue: int, concurrent_work: int = 2
    ) -> None:
        self.batching = batching
        # Blocking work (decoding, the guard, runs) in at most this many threads at once: more only trade places
        # on the cores and for the GIL, and the requests beyond them wait on the event loop at no cost.
        self.limiter = CapacityLimiter(concurrent_work)
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._batchers: dict[str, Batcher] = {}

    def batcher(self, servable: Servable) -> Batcher:
        """The batcher of this servable, created on first use."""
        batcher = self._batchers.get(servable.key)
        if batcher is None or batcher.servable is not servable:
            batcher = Batcher(servable, window_s=self.window_s, max_batch=self.max_batch, max_queue=self.max_queue,
                              limiter=self.limiter)  # fmt: skip
            self._batchers[servable.key] = batcher
        return batcher

    async def run(self, prepare: Callable[[], PreparedT]) -> tuple[PreparedT, np.ndarray]:
        """``prepare()`` (blocking: it loads, decodes, judges; returns the servable and its batch first) and the
        batch's run. Without batching both happen in one worker thread: one hand-off per request."""
        if self.batching:
            prepared = await self.work(prepare)
            return prepared, await self.batcher(prepared[0]).predict(prepared[1])
        return await self.work(self._prepare_and_run, prepare, time.perf_counter())

    def _prepare_and_run(self, prepare: Callable[[], PreparedT], submitted: float) -> tuple[PreparedT, np.ndarray]:
        waited = time.perf_counter() - submitted  # the wait for a free worker thread
        servable, batch, *_ = prepared = prepare()
        check_tensor(servable, batch)
        QUEUE_WAIT_SECONDS.labels(servable.name, servable.version).observe(waited)
        return prepared, servable.predict(batch)

    async def predict(self, servable: Servable, tensor: np.ndarray) -> np.ndarray:
        """Scores (N, ...) for a servable's input batch (N, *input_shape)."""
        if self.batching:
            return await self.batcher(servable).predict(tensor)
        check_tensor(servable, tensor)
        return await self.work(self._run_alone, servable, tensor, time.perf_counter())

    async def work(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        """``function(*args)`` in a worker thread, within the limit on blocking work. A request with a time budget
        (``shared.kit.deadline``) waits for a thread only while its work could still answer in time, else (or when
        its client has gone) SERVER_BUSY."""
        budget = current_budget()
        if budget is None:
            return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
        budget.check()
        with anyio.move_on_after(budget.wait_s(float("inf"))) as waiting:
            await self.limiter.acquire()
        if waiting.cancelled_caught:
            raise busy(f"all {int(self.limiter.total_tokens)} work threads were taken")
        try:
            budget.check()
            # The answer is due by the deadline even when the work is slower than foreseen (a large decode on busy
            # cores): past it the request answers SERVER_BUSY at once, the thread finishes and its result is dropped
            # (the decode slots still bound the decodes). The thread is counted by the limiter acquired above.
            with anyio.fail_after(max(0.0, budget.deadline - time.monotonic())):
                return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)
        except TimeoutError:
            raise busy("its work did not finish by the deadline") from None
        finally:
            self.limiter.release()

    def _run_alone(self, servable: Servable, tensor: np.ndarray, submitted: float) -> np.ndarray:
        # Without batching, the wait is the one for a free worker thread.
        QUEUE_WAIT_SECONDS.labels(servable.name, servable.version).observe(time.perf_counter() - submitted)
        return servable.predict(tensor)

    async def close(self) -> None:
        """Stop every batcher's collector."""
        batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            await batcher.close()
