"""The one data plane (after KServe's and MLServer's ``DataPlane``): every classification the service answers
goes decode -> guard -> preprocess -> predict -> postprocess here, whatever route asked.

An upload is decoded once (``DecodedImage``: a bad file is its 415) and judged once by the guard (``guard``, a
servable like the models; in refuse mode a non-MRI image is a 422 NOT_A_BRAIN_MRI before any model runs). Each
model then makes its input from that one decoding, the runner (``runner``) runs the batch, and the answer is read
from each row. Routes only parse, call one method here and serialise.

- ``predict``: one upload, one model; ``predict_files``: several uploads through one model together, each
  file's failure its own; ``compare``: one upload through several models side by side.
- ``infer``: the Open Inference Protocol's batch (image files, or the model's own tensor); ``predict_pixels``:
  decoded images a caller holds; ``predict_masked``: copies of one upload with regions hidden (explanations);
  ``judge``: the guard alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio.to_thread
import numpy as np
from starlette.concurrency import run_in_threadpool

from services.inference.guard_selector import GuardSelector
from services.inference.masked import MaskedCopies
from services.inference.oip_schemas import IMAGE_INPUT_NAME
from services.inference.oip_tensors import json_body_limit
from services.inference.referral import Referral, referral_of
from services.inference.registry import ModelRegistry
from services.inference.runner import Runner
from services.inference.servable import Classifier
from shared.core.imaging import DecodedImage
from shared.core.masking import RegionMasks
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import BatchItem, CompareItem, ItemError, OodOut, PredictionOut

logger = logging.getLogger(__name__)

# An upload as the data plane takes it: the file's bytes, or why it was not read (its own error in a batch).
Upload = bytes | ServiceError
ResultT = TypeVar("ResultT")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def answer(
    classifier: Classifier, row: np.ndarray, latency_ms: float, ood: OodOut | None, alpha: float
) -> PredictionOut:
    """One row of a classifier's output as the answer for its image, with its prediction set and referral."""
    scores = classifier.postprocess(row)
    referral = referral_of(row, classifier.contract.class_names, classifier.conformal, alpha, ood)
    return PredictionOut(model=classifier.name, version=classifier.version, label=scores.label,
                         probabilities=scores.probabilities, latency_ms=round(latency_ms, 3), members=scores.members,
                         ood=ood, prediction_set=referral.prediction_set, referral=referral.refer,
                         referral_reason=referral.reason)  # fmt: skip


def internal(what: str) -> ServiceError:
    # One item's surprise must not cost the others their answers; the log has the stack trace.
    logger.exception("%s failed unexpectedly", what)
    return ServiceError(ErrorCode.INTERNAL, "Internal error; see the inference service log.")


class DataPlane:
    """Runs servables for the routes: the registry's models, the selector's guard, through one runner."""

    def __init__(
        self, registry: ModelRegistry, guards: GuardSelector, runner: Runner, pixel_run_batch: int, alpha: float
    ) -> None:
        self.registry = registry
        self.guards = guards
        self.runner = runner
        self.pixel_run_batch = pixel_run_batch
        self.alpha = alpha  # the prediction sets' miscoverage (referral)
        # Protocol bodies are parsed one at a time: a parse makes Python objects worth several times its body,
        # so however many arrive at once, the memory is one body's (and the event loop never parses).
        self._parsing = asyncio.Lock()

    # -- admission: decode once, judge once ----------------------------------------------------------------

    def admit(self, data: bytes, frame: int | None = None) -> tuple[DecodedImage, OodOut | None]:
        """The upload decoded once, and the guard's verdict on that decoding (None: no guard, or mode off)."""
        image = DecodedImage.decode(data, frame)
        guard = self.guards.current()
        if guard is None:
            return image, None
        verdict = guard.postprocess(guard.predict(guard.preprocess([image]))[0], image)
        return image, self.guards.apply(verdict)

    async def judge(self, data: bytes, frame: int | None = None) -> OodOut | None:
        return (await self.runner.work(self.admit, data, frame))[1]

    def model(self, model: str, version: str | None = None) -> Classifier:
        """The loaded servable (blocking: a first use downloads and loads it)."""
        return self.registry.get(model, version)

    async def find(self, model: str, version: str | None = None) -> Classifier:
        """The loaded servable: at once when it is loaded, else loaded in a thread of its own, outside the limit on
        blocking work (a download or an in-request catalogue fetch must not hold decoding and runs up)."""
        loaded = self.registry.loaded_model(model, version)
        return loaded if loaded is not None else await run_in_threadpool(self.registry.get, model, version)

    # -- one upload ----------------------------------------------------------------------------------------

    async def predict(self, model: str, version: str | None, data: bytes, frame: int | None = None) -> PredictionOut:
        started = time.perf_counter()
        classifier = await self.find(model, version)

        def prepare() -> tuple[Classifier, np.ndarray, OodOut | None]:
            image, ood = self.admit(data, frame)
            return classifier, classifier.preprocess([image]), ood

        (classifier, _, ood), rows = await self.runner.run(prepare)
        return answer(classifier, rows[0], _ms(started), ood, self.alpha)

    # -- several uploads, one model ------------------------------------------------------------------------

    async def predict_files(
        self, model: str, version: str | None, files: list[Upload], frame: int | None = None
    ) -> list[BatchItem]:
        """One answer per file, in order; a file that cannot be read, decoded or is refused is its own error.
        The good files run together; an answer's latency is its own admission plus the shared run."""
        classifier = await self.find(model, version)
        prepared = await self.runner.work(lambda: [self._prepare_file(classifier, data, frame) for data in files])
        good = [item[0] for item in prepared if not isinstance(item, ServiceError)]
        started = time.perf_counter()
        rows = iter(await self.runner.predict(classifier, np.concatenate(good)) if good else [])
        run_ms = _ms(started)
        return [
            BatchItem(index=index, ok=False, error=ItemError.from_error(item))
            if isinstance(item, ServiceError)
            else BatchItem(
                index=index, ok=True, result=answer(classifier, next(rows), item[1] + run_ms, item[2], self.alpha)
            )
            for index, item in enumerate(prepared)
        ]

    def _prepare_file(
        self, classifier: Classifier, data: Upload, frame: int | None
    ) -> tuple[np.ndarray, float, OodOut | None] | ServiceError:
        if isinstance(data, ServiceError):
            return data
        started = time.perf_counter()
        try:
            image, ood = self.admit(data, frame)
            return classifier.preprocess([image]), _ms(started), ood
        except ServiceError as exc:
            return exc

    # -- one upload, several models ------------------------------------------------------------------------

    async def compare(self, names: list[str], data: bytes, frame: int | None = None) -> list[CompareItem]:
        """Each model's default version on one decoding, side by side; a model that cannot answer is its own
        error. When none can, the image is not even decoded nor judged."""
        loaded = {name: await self._attempt_async(f"loading {name}", self.find(name)) for name in names}
        prepared, admit_ms, ood = await self.runner.work(self._prepare_comparison, loaded, data, frame)
        runs = [self._compare_one(name, item, admit_ms, ood) for name, item in prepared.items()]
        return list(await asyncio.gather(*runs))

    def _prepare_comparison(
        self, loaded: dict[str, Classifier | ServiceError], data: bytes, frame: int | None
    ) -> tuple[dict[str, tuple[Classifier, np.ndarray] | ServiceError], float, OodOut | None]:
        if all(isinstance(item, ServiceError) for item in loaded.values()):
            return loaded, 0.0, None
        started = time.perf_counter()
        image, ood = self.admit(data, frame)  # judged once for all models, on the same decoding
        prepared = {
            name: item if isinstance(item, ServiceError)
            else self._attempt(f"preparing the image for {name}", lambda item=item: (item, item.preprocess([image])))
            for name, item in loaded.items()
        }  # fmt: skip
        return prepared, _ms(started), ood

    @staticmethod
    def _attempt(what: str, step: Callable[[], ResultT]) -> ResultT | ServiceError:
        try:
            return step()
        except ServiceError as exc:
            return exc
        except Exception:
            return internal(what)

    @staticmethod
    async def _attempt_async(what: str, step: Awaitable[ResultT]) -> ResultT | ServiceError:
        try:
            return await step
        except ServiceError as exc:
            return exc
        except Exception:
            return internal(what)

    async def _compare_one(
        self, name: str, prepared: tuple[Classifier, np.ndarray] | ServiceError, admit_ms: float, ood: OodOut | None
    ) -> CompareItem:
        if isinstance(prepared, ServiceError):
            return CompareItem.failed(name, prepared)
        classifier, batch = prepared
        started = time.perf_counter()
        try:
            rows = await self.runner.predict(classifier, batch)
            # Each answer's latency counts the shared decoding once, as a single predict would.
            result = answer(classifier, rows[0], admit_ms + _ms(started), ood, self.alpha)
            return CompareItem(model=name, ok=True, result=result)
        except ServiceError as exc:
            return CompareItem.failed(name, exc)
        except Exception:
            return CompareItem.failed(name, internal(f"comparing with {name}"))

    # -- batches of a protocol or of held pixels ------------------------------------------------------------

    def json_body_limit(self, classifier: Classifier, rows: int) -> int:
        """The byte limit of a protocol JSON body: ``rows`` rows of the largest input a loaded model takes."""
        shapes = [servable.input_shape for servable in self.registry.loaded.all_ready()]
        return json_body_limit([classifier.input_shape, *shapes], rows)

    async def parse(self, read: Callable[[Classifier], ResultT], classifier: Classifier) -> ResultT:
        """``read(classifier)`` (parsing a body into the model's input) in a worker thread, one at a time."""
        async with self._parsing:
            return await anyio.to_thread.run_sync(read, classifier)

    async def infer(
        self, classifier: Classifier, model_input: np.ndarray | list[bytes]
    ) -> tuple[np.ndarray, list[OodOut | None]]:
        """Probabilities for the model's own tensor, or for image files admitted ``pixel_run_batch`` at a time
        (bounded memory), with the files' verdicts (none for a tensor). A refused or bad file fails the request,
        its message naming the element (the protocol has no per-element errors)."""
        parts, verdicts = [], []
        for start in range(0, len(model_input), self.pixel_run_batch):
            chunk = model_input[start : start + self.pixel_run_batch]
            if isinstance(chunk, np.ndarray):
                batch = classifier.preprocess_tensor(chunk)
            else:
                batch, judged = await self.runner.work(self._admit_elements, classifier, chunk, start)
                verdicts += judged
            parts.append(await self.runner.predict(classifier, batch))
        return np.concatenate(parts), verdicts

    def referrals(
        self, classifier: Classifier, probabilities: np.ndarray, verdicts: list[OodOut | None]
    ) -> list[Referral]:
        """Each row's prediction set and referral (``verdicts``: the files' guard verdicts; none for a tensor)."""
        names = classifier.contract.class_names
        judged = verdicts if len(verdicts) == len(probabilities) else [None] * len(probabilities)
        return [
            referral_of(row, names, classifier.conformal, self.alpha, ood)
            for row, ood in zip(probabilities, judged, strict=True)
        ]

    def _admit_elements(
        self, classifier: Classifier, files: list[bytes], first_index: int
    ) -> tuple[np.ndarray, list[OodOut | None]]:
        images, verdicts = [], []
        for index, data in enumerate(files, first_index):
            try:
                image, verdict = self.admit(data)
            except ServiceError as exc:
                message = f"Input {IMAGE_INPUT_NAME!r} element {index}: {exc.message}"
                raise ServiceError(exc.code, message, exc.details) from exc
            images.append(image)
            verdicts.append(verdict)
        return classifier.preprocess(images), verdicts

    async def predict_pixels(self, classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
        """uint8 images (N, size, size) at the model's contract size to probabilities, ``pixel_run_batch`` at a time."""
        size = classifier.contract.image_size
        if pixels.shape[1:] != (size, size):
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"Model {classifier.key} takes {size}x{size} images (its preprocessing contract); "
                f"got {pixels.shape[1]}x{pixels.shape[2]}.",
                {"image_size": size},
            )
        parts = []
        for start in range(0, len(pixels), self.pixel_run_batch):
            images = [DecodedImage.from_pixels(image) for image in pixels[start : start + self.pixel_run_batch]]
            parts.append(await self.runner.predict(classifier, await self.runner.work(classifier.preprocess, images)))
        return np.concatenate(parts)

    async def predict_masked(
        self, classifier: Classifier, data: bytes, frame: int | None, masks: RegionMasks
    ) -> np.ndarray:
        """Probabilities (copies, classes) for copies of one upload with regions hidden, in keep-row order.

        The upload is decoded once, as ``predict`` decodes it (no guard: the caller judged it); each run of
        ``pixel_run_batch`` copies is masked at every size the model's ``preprocess`` asks for (an ensemble's
        members each at their own), so a copy that keeps every region gets ``predict``'s answer."""
        base = await self.runner.work(DecodedImage.decode, data, frame)
        parts = []
        for start in range(0, masks.copies, self.pixel_run_batch):
            copies = MaskedCopies(base, masks, slice(start, start + self.pixel_run_batch))
            batch = await self.runner.work(classifier.preprocess, copies.images())
            parts.append(await self.runner.predict(classifier, batch))
        return np.concatenate(parts)
