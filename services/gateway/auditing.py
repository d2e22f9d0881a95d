"""What the gateway records in the audit trail for each of its classifying routes: one record per answer (a
comparison: one per model that answered; a batch: one per file answered), with the sha256 of the file classified.
Inference's answers pass through the gateway as bytes; they are read here only when the trail is on."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from services.gateway.forwarding import ForwardedBody, part_sha256
from services.gateway.upstream import InferenceClient
from shared.kit.audit.requests import Auditor
from shared.kit.errors import ServiceError
from shared.kit.schemas import ENSEMBLE_MODEL, BatchPredictionOut, ExplanationOut

logger = logging.getLogger(__name__)

UPLOAD_FIELD = "file"
# A record's input hash when the forwarded body's file part could not be found (inference answered anyway).
UNKNOWN_INPUT = "unknown"


def _upload_sha256(upload: ForwardedBody) -> str:
    return part_sha256(upload.content, upload.content_type, UPLOAD_FIELD) or UNKNOWN_INPUT


def _answers(content: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """(item, answer) of inference's answer: a prediction's one, a comparison's for each model that answered;
    something else raises, which the auditor counts as a record lost."""
    body = json.loads(content)
    if "results" not in body:
        yield "0", body
        return
    for result in body["results"]:
        if result["ok"]:
            yield result["model"], result["result"]


async def record_prediction(auditor: Auditor, content: bytes, upload: ForwardedBody) -> None:
    """A prediction's or a comparison's answer, as inference gave it."""
    if auditor.on:
        digest = _upload_sha256(upload)
        await auditor.record((item, digest, answer) for item, answer in _answers(content))


async def record_batch(auditor: Auditor, files: list[bytes | Exception], answer: BatchPredictionOut) -> None:
    if not auditor.on:
        return
    answered = [
        (str(item.index), hashlib.sha256(files[item.index]).hexdigest(), item.result.model_dump())  # type: ignore[arg-type]
        for item in answer.results
        if item.ok and item.result is not None
    ]
    await auditor.record(answered)


async def record_study(auditor: Auditor, answered: list[tuple[bytes, int | None, dict[str, Any]]]) -> None:
    """A study's slices (DICOMweb pull or push): one record per slice answered, the input hash of its instance's
    file (a frame of a multi-frame instance: the item says which). Never a UID or anything of the patient's."""
    if auditor.on:
        await auditor.record(
            (str(index) if frame is None else f"{index}:frame {frame}", hashlib.sha256(data).hexdigest(), answer)
            for index, (data, frame, answer) in enumerate(answered)
        )


async def pinned_members(inference: InferenceClient, model: str, version: str, request_id: str) -> dict | None:
    """An ensemble version's members as the catalogue pins them (the explainer's answer does not carry them); None
    when the catalogue cannot be read now: the record then goes without them, and the log says so."""
    try:
        listing = await inference.list_models(request_id or None)
    except ServiceError as exc:
        logger.error("audit trail: the members of %s/%s could not be read: %s", model, version, exc.message)
        return None
    for info in listing.models:
        for known in info.versions if info.model == model else []:
            if known.version == version:
                return known.members
    return None


async def record_explanation(
    auditor: Auditor, inference: InferenceClient, image: bytes, answer: ExplanationOut
) -> None:
    if not auditor.on:
        return
    # The explained answer is the model's on the unperturbed image: its predicted label, not the label explained.
    prediction = {
        "model": answer.model,
        "version": answer.version,
        "label": answer.predicted_label,
        "probabilities": answer.probabilities,
        "ood": answer.ood.model_dump() if answer.ood is not None else None,
    }
    if answer.model == ENSEMBLE_MODEL:
        prediction["members"] = await pinned_members(inference, answer.model, answer.version, auditor.request_id)
    await auditor.record([("0", hashlib.sha256(image).hexdigest(), prediction)])
