"""Dynamic batching: concurrent requests for one model version share one onnxruntime run.

One ``Batcher`` per loaded classifier keeps the waiting tensors and a collector task. The collector
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
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from services.inference.metrics import QUEUE_WAIT_SECONDS
from shared.errors import ErrorCode, ServiceError
from shared.onnx_classifier import OnnxClassifier


def check_tensor(classifier: OnnxClassifier, tensor: np.ndarray) -> None:
    """INVALID_REQUEST unless the tensor is float32 (N >= 1, the contract's shape): one malformed tensor
    must fail its own request, not the batch it would have joined."""
    expected = classifier.contract.input_shape()[1:]
    shape_ok = tensor.ndim == len(expected) + 1 and tensor.shape[1:] == expected and len(tensor) > 0
    if tensor.dtype != np.float32 or not shape_ok:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"Model {classifier.key} takes float32 tensors of shape (N, {', '.join(map(str, expected))}) with "
            f"N >= 1; got {tensor.dtype} {tuple(tensor.shape)}.",
        )


@dataclass
class _Waiting:
    tensor: np.ndarray
    future: asyncio.Future[np.ndarray]
    arrived: float


class Batcher:
    """Coalesces the tensors of concurrent requests for one classifier into shared runs."""

    def __init__(self, classifier: OnnxClassifier, *, window_s: float, max_batch: int, max_queue: int) -> None:
        self.classifier = classifier
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.runs = 0
        self._waiting: deque[_Waiting] = deque()
        self._waiting_images = 0
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._queue_wait = QUEUE_WAIT_SECONDS.labels(classifier.name, classifier.version)

    async def predict(self, tensor: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for a model input tensor (N, ...), computed with whoever else is waiting."""
        check_tensor(self.classifier, tensor)
        if self._waiting_images + len(tensor) > self.max_queue:
            raise ServiceError(
                ErrorCode.MODEL_NOT_READY,
                f"Model {self.classifier.key} has {self._waiting_images} images waiting, at most {self.max_queue} "
                "may wait: retry shortly.",
                {"max_queue": self.max_queue},
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(tensor, future, time.perf_counter()))
        self._waiting_images += len(tensor)
        self._arrived.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect(), name=f"batcher {self.classifier.key}")
        return await future

    async def _collect(self) -> None:
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            await self._let_others_join()
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
            rows = await run_in_threadpool(self.classifier.predict, tensor)
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
                    ServiceError(ErrorCode.MODEL_NOT_READY, f"Model {self.classifier.key} is shutting down.")
                )
        self._waiting_images = 0


class Predictor:
    """What routes call to run a model: batched per model version when enabled, recorded either way."""

    def __init__(self, *, batching: bool, window_s: float, max_batch: int, max_queue: int) -> None:
        self.batching = batching
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._batchers: dict[str, Batcher] = {}

    def batcher(self, classifier: OnnxClassifier) -> Batcher:
        """The batcher of this classifier, created on first use."""
        batcher = self._batchers.get(classifier.key)
        if batcher is None or batcher.classifier is not classifier:
            batcher = Batcher(classifier, window_s=self.window_s, max_batch=self.max_batch, max_queue=self.max_queue)
            self._batchers[classifier.key] = batcher
        return batcher

    async def predict(self, classifier: OnnxClassifier, tensor: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for a model input tensor (N, ...) in the model's contract shape."""
        if not isinstance(classifier, OnnxClassifier):
            # The ensemble: its tensor is its members' side by side, and each member's session runs it.
            return await run_in_threadpool(classifier.predict, tensor)
        if self.batching:
            return await self.batcher(classifier).predict(tensor)
        check_tensor(classifier, tensor)
        return await run_in_threadpool(self._run_alone, classifier, tensor, time.perf_counter())

    def _run_alone(self, classifier: OnnxClassifier, tensor: np.ndarray, submitted: float) -> np.ndarray:
        # Without batching, the wait is the one for a free worker thread.
        QUEUE_WAIT_SECONDS.labels(classifier.name, classifier.version).observe(time.perf_counter() - submitted)
        return classifier.predict(tensor)

    async def close(self) -> None:
        """Stop every batcher's collector."""
        batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            await batcher.close()
