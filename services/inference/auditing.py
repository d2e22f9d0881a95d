"""What inference records in the audit trail: the Open Inference Protocol's answers, one record per element.

The gateway records every other classifying route (it sees the caller and does not proxy ``/v2``); inference's
``/v1`` routes are called by the gateway and the explainer, whose answers the gateway records once. An element's
input hash is the sha256 of its image file's bytes, or of its float32 tensor row as sent (C order).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from services.inference.servable import Classifier
from shared.kit.audit.requests import Answer, Auditor
from shared.kit.schemas import OodOut


def element_sha256(model_input: np.ndarray | list[bytes]) -> list[str]:
    if isinstance(model_input, np.ndarray):
        rows = np.ascontiguousarray(model_input, dtype=np.float32)
        return [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]
    return [hashlib.sha256(data).hexdigest() for data in model_input]


async def record_inference(
    auditor: Auditor,
    classifier: Classifier,
    model_input: np.ndarray | list[bytes],
    probabilities: np.ndarray,
    verdicts: list[OodOut | None],
    oip_id: str | None,
) -> None:
    """One record per element; the request id is the ``x-request-id`` header's, else the protocol's ``id``."""
    if not auditor.on:
        return
    if not auditor.request_id and oip_id:
        auditor = dataclasses.replace(auditor, request_id=oip_id[:64])
    judged = verdicts if len(verdicts) == len(probabilities) else [None] * len(probabilities)
    answers: list[Answer] = []
    for index, (digest, row, ood) in enumerate(zip(element_sha256(model_input), probabilities, judged, strict=True)):
        scores = classifier.postprocess(row)
        answer = {"model": classifier.name, "version": classifier.version, "label": scores.label,
                  "probabilities": scores.probabilities, "members": scores.members,
                  "ood": ood.model_dump() if ood is not None else None}  # fmt: skip
        answers.append((str(index), digest, answer))
    await auditor.record(answers)
