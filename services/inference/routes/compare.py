"""Answers that hold several items, each with its own error: one image with several models (``/v1/compare``)
and several images with one model (``/v1/models/{model}/predict-batch``).

A comparison decodes its image once and resizes it once per contract size, however many models run on it; a
batch decodes each file once and runs all of them through the model together. Runs go through the predictor,
as single predictions do, so they share the batching and the onnxruntime thread budget (``batching``).

The guard against non-MRI input (``services.inference.ood``) judges each file once, not once per model: a
comparison's image refused is one 422 NOT_A_BRAIN_MRI for the request (its one file is the problem, as a file
that is not an image is one 415); a batch's refused file is that file's own error while the others answer.
Every answer carries its file's verdict in ``ood``.
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
from services.inference.deps import ModelDep, OodGuardDep, PredictorDep, RegistryDep, SettingsDep
from services.inference.ensemble import EnsembleClassifier
from services.inference.ood import NOT_MRI_422, OodGuard
from services.inference.registry import ModelRegistry
from services.inference.uploads import judge, judge_and_prepare
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
    OodOut,
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


def _prediction(
    classifier: OnnxClassifier, probabilities: np.ndarray, latency_ms: float, ood: OodOut | None
) -> PredictionOut:
    label, by_class = classifier.postprocess(probabilities)
    return PredictionOut(
        model=classifier.name,
        version=classifier.version,
        label=label,
        probabilities=by_class,
        latency_ms=round(latency_ms, 3),
        members=getattr(classifier, "member_versions", None),  # the ensemble's members that answered
        ood=ood,
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
    registry: ModelRegistry, guard: OodGuard, data: bytes, names: list[str], frame: int | None = None
) -> tuple[dict[str, Prepared], float, OodOut | None]:
    """Each named model's default version with the image as its tensor, decoded once (one 415 if it is not an
    image); the milliseconds the decoding and the verdict took; the guard's one verdict (refused: one 422).

    Models are resolved first: when none can answer, the image is not even decoded nor judged, and every item
    says why.
    """
    loaded = {name: _load(registry, name) for name in names}
    sizes = {item.contract.image_size for item in loaded.values() if isinstance(item, OnnxClassifier)}
    sizes |= {size for item in loaded.values() if isinstance(item, EnsembleClassifier) for size in item.member_sizes}
    started = time.perf_counter()
    pixels: dict[int, np.ndarray] = {}
    ood = None
    if sizes:
        gray, ood = judge(guard, data, frame)  # judged once for all models, on the same decoding
        pixels = {size: imaging.resize_gray(gray, size) for size in sizes}
    decode_ms = _elapsed_ms(started)
    return {name: _model_input(name, item, pixels) for name, item in loaded.items()}, decode_ms, ood


async def _answer(
    predictor: Predictor, name: str, prepared: Prepared, decode_ms: float, ood: OodOut | None
) -> CompareItem:
    """One model's answer; any failure is the item's own error."""
    if isinstance(prepared, ServiceError):
        return CompareItem.failed(name, prepared)
    classifier, tensor = prepared
    started = time.perf_counter()
    try:
        probabilities = (await predictor.predict(classifier, tensor))[0]
        # Each answer's latency counts the shared decoding once, as a single predict would.
        result = _prediction(classifier, probabilities, decode_ms + _elapsed_ms(started), ood)
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
    "is not an image is one 415 for the request. The guard judges the image once: every answer carries its "
    "`ood` verdict, and in refuse mode an image that is not a brain MRI slice is one 422 NOT_A_BRAIN_MRI.",
    responses=error_responses(
        400,
        413,
        415,
        422,
        503,
        descriptions={422: f"{NOT_MRI_422}; INVALID_REQUEST: a bad parameter (e.g. no `models`, a bad name)."},
    ),
)
async def compare_models(
    registry: RegistryDep,
    predictor: PredictorDep,
    guard: OodGuardDep,
    data: ImageBytes,
    models: ModelsQuery,
    frame: FrameQuery = None,
) -> CompareOut:
    names = list(dict.fromkeys(models))
    # Loading a model, decoding and judging are blocking work: keep them off the event loop.
    prepared, decode_ms, ood = await run_in_threadpool(prepare_comparison, registry, guard, data, names, frame)
    items = await asyncio.gather(*(_answer(predictor, name, item, decode_ms, ood) for name, item in prepared.items()))
    return CompareOut.from_items(list(items))


# One file of a batch ready to run: its tensor, the milliseconds its verdict and decoding took, its verdict.
PreparedFile = tuple[np.ndarray, float, OodOut | None] | ServiceError


def _preprocess(
    classifier: OnnxClassifier, guard: OodGuard, data: bytes | ServiceError, frame: int | None = None
) -> PreparedFile:
    """The file decoded once, judged by the guard (refused: its own 422) and made the model's tensor; any
    failure is the file's own error."""
    if isinstance(data, ServiceError):
        return data
    started = time.perf_counter()
    try:
        tensor, ood = judge_and_prepare(classifier, guard, data, frame)
        return tensor, _elapsed_ms(started), ood
    except ServiceError as exc:
        return exc


def _preprocess_all(
    classifier: OnnxClassifier, guard: OodGuard, files: list[bytes | ServiceError], frame: int | None = None
) -> list[PreparedFile]:
    return [_preprocess(classifier, guard, data, frame) for data in files]


async def classify_files(
    predictor: Predictor,
    classifier: OnnxClassifier,
    guard: OodGuard,
    files: list[bytes | ServiceError],
    frame: int | None = None,
) -> BatchPredictionOut:
    """Each file judged and decoded on its own (a bad or refused one is its own error), then all good ones
    through the model together.

    An answer's latency is its own verdict and decoding plus the one run that all good files of the request shared.
    """
    prepared = await run_in_threadpool(_preprocess_all, classifier, guard, files, frame)
    good = [item[0] for item in prepared if not isinstance(item, ServiceError)]
    started = time.perf_counter()
    rows = iter(await predictor.predict(classifier, np.concatenate(good)) if good else [])
    run_ms = _elapsed_ms(started)
    results = [
        BatchItem(index=index, ok=False, error=ItemError.from_error(item))
        if isinstance(item, ServiceError)
        else BatchItem(index=index, ok=True, result=_prediction(classifier, next(rows), item[1] + run_ms, item[2]))
        for index, item in enumerate(prepared)
    ]
    return BatchPredictionOut(results=results)


@router.post(
    "/models/{model}/predict-batch",
    response_model=BatchPredictionOut,
    summary="Classify several MRI images with one model",
    description=f"Upload up to {PREDICT_BATCH_MAX_FILES} images as repeated multipart fields `files`; choose the "
    "version with `version` (number or alias; default: the default version). Answers one entry per file, in "
    "order: a prediction, or that file's own error (e.g. INVALID_IMAGE, 415) while the others answer. The good "
    "files run through the model together. The whole body is bounded by the service's upload limit. The guard "
    "judges each file: every prediction carries its `ood` verdict, and in refuse mode a file that is not a "
    "brain MRI slice gets its own NOT_A_BRAIN_MRI (422) error entry.",
    responses=error_responses(
        400,
        404,
        413,
        422,
        500,
        503,
        descriptions={
            **_REGISTRY_DOWN,
            422: "INVALID_REQUEST: no `files` field, too many files, or a malformed parameter. (A file the guard "
            f"refuses is not a 422 for the request: its own entry says {ErrorCode.NOT_A_BRAIN_MRI}.)",
        },
    ),
)
async def predict_batch(
    classifier: ModelDep,
    predictor: PredictorDep,
    guard: OodGuardDep,
    settings: SettingsDep,
    files: BatchFiles,
    frame: FrameQuery = None,
) -> BatchPredictionOut:
    data = await read_uploads(files, PREDICT_BATCH_MAX_FILES, settings.max_upload_bytes)
    return await classify_files(predictor, classifier, guard, data, frame)
