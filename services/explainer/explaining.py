"""One explanation request: decode the upload, pin the model version, run LIME, render the overlay."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from services.explainer.config import Settings
from services.explainer.inference import InferenceBatchClient
from shared.core.imaging import decode_grayscale, resize_gray
from shared.core.lime_explanation import Explanation, explain
from shared.core.lime_overlay import Overlay, render_overlay
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import ContractOut, ExplanationOut, OodOut, RegionOut


@dataclass(frozen=True)
class ExplainRequest:
    """What a client asked for, already validated against the settings' bounds."""

    model: str
    version: str | None
    label: str | None
    seed: int
    num_samples: int
    num_regions: int
    # One frame of a multi-frame DICOM upload (0-based); None for every other image.
    frame: int | None = None


def images_per_request(settings: Settings, image_size: int) -> int:
    """Perturbed images per call to the inference service: few calls, each within both limits."""
    return max(1, min(settings.predict_batch_images, settings.predict_batch_bytes // (image_size * image_size)))


def label_index(label: str | None, class_names: Sequence[str]) -> int | None:
    """The index of the class a client asked to explain (None: the predicted one); 422 for an unknown name."""
    if label is None:
        return None
    if label not in class_names:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"label must be one of {', '.join(class_names)}; got {label!r}.",
            {"class_names": list(class_names)},
        )
    return list(class_names).index(label)


def explain_upload(
    data: bytes,
    request: ExplainRequest,
    inference: InferenceBatchClient,
    settings: Settings,
    request_id: str | None = None,
) -> ExplanationOut:
    """The explanation of ``request.model``'s answer for the uploaded image (blocking; run it in a thread)."""
    started = time.perf_counter()
    scan = decode_grayscale(data, request.frame)
    # Resolve the version once: an alias that moves mid-explanation must not mix two models' answers.
    resolved = inference.contract(request.model, request.version, request_id)
    # Guarded like a prediction, once the model is known: a non-MRI image is inference's 422, explained never.
    ood = inference.judge(data, request.frame, request_id)
    contract = resolved.contract
    chosen = label_index(request.label, contract.class_names)

    def predict(batch: np.ndarray) -> np.ndarray:
        return inference.predict_pixels(resolved.model, resolved.version, batch, request_id)

    result = explain(
        resize_gray(scan, contract.image_size),
        predict,
        contract.class_names,
        label=chosen,
        num_samples=request.num_samples,
        seed=request.seed,
        num_segments=settings.num_segments,
        batch_size=images_per_request(settings, contract.image_size),
    )
    rendering = time.perf_counter()
    overlay = render_overlay(np.asarray(scan), result, outline=request.num_regions, max_side=settings.overlay_max_side)
    timings = {**result.timings_ms, "render": round((time.perf_counter() - rendering) * 1000.0, 2)}
    latency_ms = (time.perf_counter() - started) * 1000.0
    return _answer(resolved, request, result, overlay, timings, ood, latency_ms)


def _answer(
    resolved: ContractOut,
    request: ExplainRequest,
    result: Explanation,
    overlay: Overlay,
    timings: dict[str, float],
    ood: OodOut | None,
    latency_ms: float,
) -> ExplanationOut:
    return ExplanationOut(
        model=resolved.model,
        version=resolved.version,
        label=result.label,
        predicted_label=result.predicted_label,
        probabilities={name: float(p) for name, p in zip(result.class_names, result.probabilities, strict=True)},
        seed=request.seed,
        num_samples=request.num_samples,
        num_segments=int(result.segments.max()) + 1,
        regions=[RegionOut(**asdict(region)) for region in result.top_regions(request.num_regions)],
        score=result.score,
        intercept=result.intercept,
        local_prediction=result.local_prediction,
        overlay_png=base64.b64encode(overlay.png).decode("ascii"),
        overlay_width=overlay.width,
        overlay_height=overlay.height,
        latency_ms=round(latency_ms, 2),
        timings_ms=timings,
        ood=ood,
    )
