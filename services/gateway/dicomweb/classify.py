"""Each MR slice of a study through inference, exactly as /v1/predict sends an upload (guard, calibration,
prediction sets and referral are inference's), and the study's summary.

A multi-frame instance is one slice per frame (inference's ``frame`` parameter). A slice inference refuses (the
guard's NOT_A_BRAIN_MRI, UNSUPPORTED_DICOM, ...) is listed with that error, never guessed at; the others answer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from pydicom.dataset import Dataset

from services.gateway.dicomweb.frames import single_frame
from services.gateway.dicomweb.schemas import SkippedOut, SliceOut, SummaryOut
from services.gateway.forwarding import ForwardedBody
from services.gateway.upstream import InferenceClient, multipart_files
from shared.core.contract import CLASS_NAMES
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import ItemError, PredictionOut

NO_TUMOUR = "notumor"
TUMOUR_LABELS = tuple(name for name in CLASS_NAMES if name != NO_TUMOUR)
NOT_MR = "NOT_MR"


@dataclass(frozen=True)
class SourceInstance:
    """A fetched or pushed MR instance: its dataset (for the report) and its Part 10 bytes (for inference)."""

    dataset: Dataset
    data: bytes

    @property
    def sop_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def frames(self) -> int:
        """How many frames it holds (1 for a single-frame instance): each is classified."""
        return max(1, int(self.dataset.get("NumberOfFrames", 1) or 1))


@dataclass(frozen=True)
class Classified:
    """One slice's answer, kept with its instance (the report references it)."""

    instance: SourceInstance
    frame: int | None
    prediction: PredictionOut

    def out(self) -> SliceOut:
        p = self.prediction
        return SliceOut(
            sop_instance_uid=self.instance.sop_uid,
            series_instance_uid=self.instance.series_uid,
            frame=self.frame,
            label=p.label,
            probabilities=p.probabilities,
            ood=p.ood,
            prediction_set=p.prediction_set,
            referral=p.referral,
            referral_reason=p.referral_reason,
        )


def not_mr(dataset: Dataset) -> SkippedOut:
    """An instance of another modality (CT, SR, a PDF...): listed, not fetched, not classified."""
    modality = str(dataset.get("Modality", "") or "") or None
    return SkippedOut(
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        series_instance_uid=str(dataset.get("SeriesInstanceUID", "")),
        reason=NOT_MR,
        modality=modality if modality and modality.isalnum() and len(modality) <= 16 else None,
    )


def is_mr(dataset: Dataset) -> bool:
    return str(dataset.get("Modality", "")).strip().upper() == "MR"


async def classify_instances(
    inference: InferenceClient,
    instances: list[SourceInstance],
    model: str,
    version: str | None,
    request_id: str | None,
    concurrency: int,
) -> tuple[list[Classified], list[SkippedOut]]:
    """Every frame of every instance through inference's predict, at most ``concurrency`` at once, in order."""
    gate = asyncio.Semaphore(concurrency)
    jobs = [
        (instance, frame if instance.frames > 1 else None) for instance in instances for frame in range(instance.frames)
    ]

    async def one(instance: SourceInstance, frame: int | None) -> Classified | SkippedOut:
        # A frame goes alone when it can be cut out; else the whole instance, with inference's frame parameter.
        alone = single_frame(instance.dataset, frame, instance.frames) if frame is not None else None
        body, content_type = multipart_files("file", [alone if alone is not None else instance.data])
        async with gate:
            try:
                answer = await inference.predict(
                    model, version, ForwardedBody(body, content_type), request_id, None if alone is not None else frame
                )
            except ServiceError as error:
                # A model or version that does not exist, or inference being down, fails every slice alike: the
                # whole request answers that error rather than a list of identical refusals.
                if error.code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.VERSION_NOT_FOUND) or error.status == 503:
                    raise
                return SkippedOut(
                    sop_instance_uid=instance.sop_uid,
                    series_instance_uid=instance.series_uid,
                    frame=frame,
                    reason=error.code.value,
                    error=ItemError.from_error(error),
                )
        return Classified(instance, frame, PredictionOut.model_validate_json(answer))

    results = await asyncio.gather(*(one(instance, frame) for instance, frame in jobs))
    return (
        [item for item in results if isinstance(item, Classified)],
        [item for item in results if isinstance(item, SkippedOut)],
    )


def summarise(classified: list[Classified], skipped: int) -> SummaryOut:
    """The label of the most confident tumour finding (notumor when no slice shows one), slices per label."""
    counts = Counter(item.prediction.label for item in classified)
    tumours = [item for item in classified if item.prediction.label in TUMOUR_LABELS]
    referred = sum(item.prediction.referral for item in classified)
    base = {"slices_per_label": dict(counts), "classified": len(classified), "skipped": skipped, "referred": referred}
    if tumours:
        best = max(tumours, key=lambda item: item.prediction.probabilities[item.prediction.label])
        return SummaryOut(
            label=best.prediction.label,
            probability=best.prediction.probabilities[best.prediction.label],
            sop_instance_uid=best.instance.sop_uid,
            **base,
        )
    return SummaryOut(label=NO_TUMOUR if classified else None, **base)
