"""One explanation request: decode the upload, pin the model version, explain, render the overlay."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from services.explainer.config import Settings
from services.explainer.inference import InferenceBatchClient
from shared.core.explanation.lime import lime
from shared.core.explanation.occlusion import occlusion
from shared.core.explanation.overlay import Overlay, render_overlay
from shared.core.explanation.result import Explanation, PredictMasked
from shared.core.imaging import decode_grayscale, resize_gray
from shared.core.masking import Fill, RegionMasks
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import ContractOut, ExplainMethod, ExplanationOut, OodOut, RegionOut


@dataclass(frozen=True)
class ExplainRequest:
    """What a client asked for, already validated against the settings' bounds."""

    model: str
    version: str | None
    label: str | None
    method: ExplainMethod
    fill: Fill
    seed: int  # LIME only
    num_samples: int  # LIME only
    num_regions: int
    # One frame of a multi-frame DICOM upload (0-based); None for every other image.
    frame: int | None = None


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


def masked_predictor(
    inference: InferenceBatchClient,
    model: str,
    version: str,
    data: bytes,
    frame: int | None,
    max_copies: int,
    request_id: str | None = None,
) -> PredictMasked:
    """The served model's answers for copies of the upload, at most ``max_copies`` per call to inference."""

    def predict(masks: RegionMasks) -> np.ndarray:
        answers = [
            inference.predict_masked(
                model,
                version,
                data,
                frame,
                RegionMasks(masks.labels, masks.keep[start : start + max_copies], masks.fill),
                request_id,
            )
            for start in range(0, masks.copies, max_copies)
        ]
        return np.concatenate(answers, axis=0)

    return predict


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
    predict = masked_predictor(inference, resolved.model, resolved.version, data, request.frame,
                               settings.max_copies_per_request, request_id)  # fmt: skip
    # The regions are drawn on the slice as the model sees it; inference applies them to its own resize.
    pixels = resize_gray(scan, contract.image_size)
    if request.method == "occlusion":
        result = occlusion(
            pixels,
            predict,
            contract.class_names,
            label=chosen,
            fill=request.fill,
            cells=settings.occlusion_cells,
            shifts=settings.occlusion_shifts,
        )
    else:
        result = lime(
            pixels,
            predict,
            contract.class_names,
            label=chosen,
            fill=request.fill,
            num_samples=request.num_samples,
            seed=request.seed,
            num_segments=settings.num_segments,
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
        method=request.method,
        fill=result.fill,
        label=result.label,
        predicted_label=result.predicted_label,
        probabilities={name: float(p) for name, p in zip(result.class_names, result.probabilities, strict=True)},
        seed=result.seed,
        num_samples=result.num_samples,
        num_segments=result.num_regions,
        regions=[RegionOut(**asdict(region)) for region in result.supporting(request.num_regions)],
        opposing_regions=[RegionOut(**asdict(region)) for region in result.opposing(request.num_regions)],
        fit_r2=result.fit_r2,
        intercept=result.intercept,
        local_prediction=result.local_prediction,
        overlay_png=base64.b64encode(overlay.png).decode("ascii"),
        overlay_width=overlay.width,
        overlay_height=overlay.height,
        latency_ms=round(latency_ms, 2),
        timings_ms=timings,
        ood=ood,
    )
