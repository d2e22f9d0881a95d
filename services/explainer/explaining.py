"""One explanation request: decode the upload, pin the model version, run LIME, render the overlay."""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass

import numpy as np

from services.explainer.config import Settings
from services.explainer.inference import InferenceBatchClient
from shared.errors import ErrorCode, ServiceError
from shared.imaging import decode_grayscale, resize_gray
from shared.lime_explanation import explain, render_overlay
from shared.schemas import ExplanationOut, RegionOut


@dataclass(frozen=True)
class ExplainRequest:
    """What a client asked for, already validated against the settings' bounds."""

    model: str
    version: str | None
    label: str | None
    seed: int
    num_samples: int
    num_regions: int


def images_per_request(settings: Settings, image_size: int) -> int:
    """Perturbed images per call to the inference service: few calls, each within both limits."""
    return max(1, min(settings.predict_batch_images, settings.predict_batch_bytes // (image_size * image_size)))


def explain_upload(
    data: bytes,
    request: ExplainRequest,
    inference: InferenceBatchClient,
    settings: Settings,
    request_id: str | None = None,
) -> ExplanationOut:
    """The explanation of ``request.model``'s answer for the uploaded image (blocking; run it in a thread)."""
    started = time.perf_counter()
    scan = decode_grayscale(data)
    # Resolve the version once: an alias that moves mid-explanation must not mix two models' answers.
    resolved = inference.contract(request.model, request.version, request_id)
    contract = resolved.contract
    label_index = None
    if request.label is not None:
        if request.label not in contract.class_names:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"label must be one of {', '.join(contract.class_names)}; got {request.label!r}.",
                {"class_names": list(contract.class_names)},
            )
        label_index = contract.class_names.index(request.label)
    pixels = resize_gray(scan, contract.image_size)

    def predict(batch: np.ndarray) -> np.ndarray:
        return inference.predict_pixels(resolved.model, resolved.version, batch, request_id)

    result = explain(
        pixels,
        predict,
        contract.class_names,
        label=label_index,
        num_samples=request.num_samples,
        seed=request.seed,
        num_segments=settings.num_segments,
        batch_size=images_per_request(settings, contract.image_size),
    )
    rendering = time.perf_counter()
    png = render_overlay(np.asarray(scan), result, outline=request.num_regions, max_side=settings.overlay_max_side)
    timings = {**result.timings_ms, "render": round((time.perf_counter() - rendering) * 1000.0, 2)}
    width, height = _png_size(png)
    return ExplanationOut(
        model=resolved.model,
        version=resolved.version,
        label=result.label,
        predicted_label=result.predicted_label,
        probabilities={name: float(p) for name, p in zip(contract.class_names, result.probabilities, strict=True)},
        seed=request.seed,
        num_samples=request.num_samples,
        num_segments=int(result.segments.max()) + 1,
        regions=[RegionOut(**asdict(region)) for region in result.top_regions(request.num_regions)],
        score=result.score,
        intercept=result.intercept,
        local_prediction=result.local_prediction,
        overlay_png=base64.b64encode(png).decode("ascii"),
        overlay_width=width,
        overlay_height=height,
        latency_ms=round((time.perf_counter() - started) * 1000.0, 2),
        timings_ms=timings,
    )


def _png_size(png: bytes) -> tuple[int, int]:
    # Width and height are the first two fields of the IHDR chunk, right after the signature.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
