"""Answers that hold several items, each with its own error: one image with several models (``/v1/compare``)
and several images with one model (``/v1/models/{model}/predict-batch``).

A comparison decodes its image once and resizes it once per contract size, however many models run on it; a
batch decodes each file once and runs all of them through the model together. Runs go through the predictor,
as single predictions do, so they share the batching and the onnxruntime thread budget (``batching``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Query, UploadFile
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from services.inference.batching import Predictor
from services.inference.deps import ModelDep, PredictorDep, RegistryDep, SettingsDep
from services.inference.ensemble import EnsembleClassifier
from services.inference.registry import ModelRegistry
from shared import imaging
from shared.errors import ErrorCode, ServiceError
from shared.onnx_classifier import OnnxClassifier
from shared.params import NAME_PATTERN, FrameQuery
from shared.schemas import (
    COMPARE_MAX_MODELS,
    PREDICT_BATCH_MAX_FILES,
    BatchItem,
    BatchPredictionOut,
    CompareItem,
    CompareOut,
    ItemError,
    PredictionOut,
)
from shared.service import error_responses
from shared.uploads import ImageBytes, read_uploads

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["models"])

_REGISTRY_DOWN = {503: f"{ErrorCode.REGISTRY_UNAVAILABLE}: MLflow unreachable."}

ModelsQuery = Annotated[
    list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]],
    Query(
        min_length=1,
        max_length=COMPARE_MAX_MODELS,
        description=f"A model name, repeated for each model (at most {COMPARE_MAX_MODELS}): `models=rf&models=cnn`.",
    ),
]
BatchFiles = Annotated[
    list[UploadFile],
    File(description=f"The images, one `files` part each (at most {PREDICT_BATCH_MAX_FILES})."),
]


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _prediction(classifier: OnnxClassifier, probabilities: np.ndarray, latency_ms: float) -> PredictionOut:
    label, by_class = classifier.postprocess(probabilities)
    return PredictionOut(
        model=classifier.name,
        version=classifier.version,
        label=label,
        probabilities=by_class,
        latency_ms=round(latency_ms, 3),
        members=getattr(classifier, "member_versions", None),  # the ensemble's members that answered
    )


def _internal(what: str) -> ServiceError:
    # One item's surprise must not cost the others their answers; the log has the stack trace.
    logger.exception("%s failed unexpectedly", what)
    return ServiceError(ErrorCode.INTERNAL, "Internal error; see the inference service log.")


def _load(registry: ModelRegistry, name: str) -> OnnxClassifier | ServiceError:
    try:
        return registry.get(name)
    except ServiceError as exc:
        return exc
    except Exception:
        return _internal(f"loading {name}")


# A model that can run: its classifier and the image as its tensor; or why it cannot.
Prepared = tuple[OnnxClassifier, np.ndarray] | ServiceError


def _model_input(name: str, loaded: OnnxClassifier | ServiceError, pixels: dict[int, np.ndarray]) -> Prepared:
    if isinstance(loaded, ServiceError):
        return loaded
    try:
        if isinstance(loaded, EnsembleClassifier):  # its members' tensors side by side
            return loaded, loaded.tensor_from_pixels(pixels)
        contract = loaded.contract
        return loaded, imaging.to_model_input(pixels[contract.image_size], contract)
    except ServiceError as exc:
        return exc
    except Exception:
        return _internal(f"preparing the image for {name}")


def prepare_comparison(
    registry: ModelRegistry, data: bytes, names: list[str], frame: int | None = None
) -> tuple[dict[str, Prepared], float]:
    """Each named model's default version with the image as its tensor, decoded once (one 415 if it is not an
    image), and the milliseconds the decoding took.

    Models are resolved first: when none can answer, the image is not even decoded and every item says why.
    """
    loaded = {name: _load(registry, name) for name in names}
    sizes = {item.contract.image_size for item in loaded.values() if isinstance(item, OnnxClassifier)}
    sizes |= {size for item in loaded.values() if isinstance(item, EnsembleClassifier) for size in item.member_sizes}
    started = time.perf_counter()
    pixels: dict[int, np.ndarray] = {}
    if sizes:
        gray = imaging.decode_grayscale(data, frame)
        pixels = {size: imaging.resize_gray(gray, size) for size in sizes}
    decode_ms = _elapsed_ms(started)
    return {name: _model_input(name, item, pixels) for name, item in loaded.items()}, decode_ms


async def _answer(predictor: Predictor, name: str, prepared: Prepared, decode_ms: float) -> CompareItem:
    """One model's answer; any failure is the item's own error."""
    if isinstance(prepared, ServiceError):
        return CompareItem.failed(name, prepared)
    classifier, tensor = prepared
    started = time.perf_counter()
    try:
        probabilities = (await predictor.predict(classifier, tensor))[0]
        # Each answer's latency counts the shared decoding once, as a single predict would.
        result = _prediction(classifier, probabilities, decode_ms + _elapsed_ms(started))
    except ServiceError as exc:
        return CompareItem.failed(name, exc)
    except Exception:
        return CompareItem.failed(name, _internal(f"comparing with {name}"))
    return CompareItem(model=name, ok=True, result=result)


@router.post(
    "/compare",
    response_model=CompareOut,
    summary="Classify one MRI image with several models",
    description="Upload one image as the multipart field `file` and name the models with repeated `models` "
    "parameters. The image is decoded once and resized once per contract size; every model's default version "
    "(alias `champion` if set, else the latest) runs on it, the models concurrently, each run shared with "
    "concurrent requests for that model when batching is on. A model that cannot answer (unknown, no version, "
    "cannot be loaded) gets its own `error` entry (code, message, status) while the others answer; a file that "
    "is not an image is one 415 for the request.",
    responses=error_responses(400, 413, 415, 422, 503),
)
async def compare_models(
    registry: RegistryDep, predictor: PredictorDep, data: ImageBytes, models: ModelsQuery, frame: FrameQuery = None
) -> CompareOut:
    names = list(dict.fromkeys(models))
    # Loading a model and decoding are blocking work: keep them off the event loop.
    prepared, decode_ms = await run_in_threadpool(prepare_comparison, registry, data, names, frame)
    items = await asyncio.gather(*(_answer(predictor, name, item, decode_ms) for name, item in prepared.items()))
    return CompareOut.from_items(list(items))


def _preprocess(
    classifier: OnnxClassifier, data: bytes | ServiceError, frame: int | None = None
) -> tuple[np.ndarray | ServiceError, float]:
    if isinstance(data, ServiceError):
        return data, 0.0
    started = time.perf_counter()
    try:
        return classifier.preprocess(data, frame), _elapsed_ms(started)
    except ServiceError as exc:
        return exc, 0.0


def _preprocess_all(
    classifier: OnnxClassifier, files: list[bytes | ServiceError], frame: int | None = None
) -> list[tuple[np.ndarray | ServiceError, float]]:
    return [_preprocess(classifier, data, frame) for data in files]


async def classify_files(
    predictor: Predictor, classifier: OnnxClassifier, files: list[bytes | ServiceError], frame: int | None = None
) -> BatchPredictionOut:
    """Each file decoded on its own (a bad one is its own error), then all good ones through the model together.

    An answer's latency is its own decoding plus the one run that all good files of the request shared.
    """
    prepared = await run_in_threadpool(_preprocess_all, classifier, files, frame)
    good = [tensor for tensor, _ in prepared if isinstance(tensor, np.ndarray)]
    started = time.perf_counter()
    rows = iter(await predictor.predict(classifier, np.concatenate(good)) if good else [])
    run_ms = _elapsed_ms(started)
    results = [
        BatchItem(index=index, ok=False, error=ItemError.from_error(tensor))
        if isinstance(tensor, ServiceError)
        else BatchItem(index=index, ok=True, result=_prediction(classifier, next(rows), decode_ms + run_ms))
        for index, (tensor, decode_ms) in enumerate(prepared)
    ]
    return BatchPredictionOut(results=results)


@router.post(
    "/models/{model}/predict-batch",
    response_model=BatchPredictionOut,
    summary="Classify several MRI images with one model",
    description=f"Upload up to {PREDICT_BATCH_MAX_FILES} images as repeated multipart fields `files`; choose the "
    "version with `version` (number or alias; default: the default version). Answers one entry per file, in "
    "order: a prediction, or that file's own error (e.g. INVALID_IMAGE, 415) while the others answer. The good "
    "files run through the model together. The whole body is bounded by the service's upload limit.",
    responses=error_responses(400, 404, 413, 422, 500, 503, descriptions=_REGISTRY_DOWN),
)
async def predict_batch(
    classifier: ModelDep, predictor: PredictorDep, settings: SettingsDep, files: BatchFiles, frame: FrameQuery = None
) -> BatchPredictionOut:
    data = await read_uploads(files, PREDICT_BATCH_MAX_FILES, settings.max_upload_bytes)
    return await classify_files(predictor, classifier, data, frame)
