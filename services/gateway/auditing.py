"""What the gateway records in the audit trail for each of its classifying routes: one record per answer (a
comparison: one per model that answered; a batch: one per file answered), with the sha256 of the file classified.
Inference's answers pass through the gateway as bytes; they are read here only when the trail is on."""

from __future__ import annotations

import hashlib
import json

from services.gateway.forwarding import ForwardedBody, part_sha256
from shared.kit.audit.requests import Auditor
from shared.kit.schemas import BatchPredictionOut, ExplanationOut

UPLOAD_FIELD = "file"
# A record's input hash when the forwarded body's file part could not be found (inference answered anyway).
UNKNOWN_INPUT = "unknown"


def _upload_sha256(upload: ForwardedBody) -> str:
    return part_sha256(upload.content, upload.content_type, UPLOAD_FIELD) or UNKNOWN_INPUT


async def record_prediction(auditor: Auditor, content: bytes, upload: ForwardedBody) -> None:
    if auditor.on:
        await auditor.record([("0", _upload_sha256(upload), json.loads(content))])


async def record_comparison(auditor: Auditor, content: bytes, upload: ForwardedBody) -> None:
    if not auditor.on:
        return
    digest = _upload_sha256(upload)
    results = json.loads(content).get("results", [])
    await auditor.record((item["model"], digest, item["result"]) for item in results if item.get("ok"))


async def record_batch(auditor: Auditor, files: list[bytes | Exception], answer: BatchPredictionOut) -> None:
    if not auditor.on:
        return
    answered = [
        (str(item.index), hashlib.sha256(files[item.index]).hexdigest(), item.result.model_dump())  # type: ignore[arg-type]
        for item in answer.results
        if item.ok and item.result is not None
    ]
    await auditor.record(answered)


async def record_explanation(auditor: Auditor, image: bytes, answer: ExplanationOut) -> None:
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
    await auditor.record([("0", hashlib.sha256(image).hexdigest(), prediction)])
