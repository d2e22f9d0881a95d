"""A study's way through the gateway: find and fetch (pull) or read (push), classify, report, store.

Both routes end in ``answer``: the same classification, the same reports and the same JSON, whether the instances
came from the PACS or in the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset

from services.gateway.auditing import record_study
from services.gateway.dicomweb.classify import (
    Classified,
    SourceInstance,
    classify_instances,
    is_mr,
    not_mr,
    summarise,
)
from services.gateway.dicomweb.fhir import build_bundle
from services.gateway.dicomweb.pacs import PacsClient, part10_bytes
from services.gateway.dicomweb.push import too_many
from services.gateway.dicomweb.report import MANUFACTURER, BuiltReport, ModelIdentity, build_reports
from services.gateway.dicomweb.schemas import ReportOut, SkippedOut, StudyClassificationOut
from services.gateway.dicomweb.settings import DicomWebSettings
from services.gateway.upstream import InferenceClient
from shared.kit.audit.requests import Auditor
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRequest:
    """What one study request asks: the model (and version) and who to ask."""

    inference: InferenceClient
    settings: DicomWebSettings
    model: str
    version: str | None
    request_id: str | None
    auditor: Auditor
    fhir: bool = False


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


async def pull_study(
    request: StudyRequest, pacs: PacsClient, study_uid: str, series_uid: str | None
) -> StudyClassificationOut:
    """QIDO-RS for the study's (or series') instances, WADO-RS for its MR ones, then ``answer``."""
    start = time.perf_counter()
    limit = request.settings.dicomweb_max_instances
    found = await pacs.find_instances(study_uid, series_uid, limit + 1)
    if not found:
        what = "series of this study" if series_uid else "study"
        raise ServiceError(ErrorCode.NOT_FOUND, f"The DICOMweb server holds no instance of this {what}.")
    if len(found) > limit:
        # Asked for one more than the limit: "more than" is all that is known, not how many.
        raise too_many(len(found), limit, counted=False)
    if any(not item.get("SOPInstanceUID") or not (item.get("SeriesInstanceUID") or series_uid) for item in found):
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR, "The DICOMweb server's search answer lacks instances' or series' UIDs."
        )
    # A server may leave the series-level Modality out of an instance search: those instances are fetched and
    # their own header decides.
    skipped = [not_mr(item) for item in found if item.get("Modality") and not is_mr(item)]
    gate = asyncio.Semaphore(request.settings.dicomweb_concurrency)

    async def fetch(item: Dataset) -> SourceInstance:
        series = str(item.get("SeriesInstanceUID") or series_uid)
        async with gate:
            dataset = await pacs.fetch(study_uid, series, str(item.SOPInstanceUID))
        return SourceInstance(dataset, part10_bytes(dataset))

    fetched = await asyncio.gather(*(fetch(item) for item in found if is_mr(item) or not item.get("Modality")))
    skipped += [not_mr(instance.dataset) for instance in fetched if not is_mr(instance.dataset)]
    instances = [instance for instance in fetched if is_mr(instance.dataset)]
    return await answer(request, study_uid, instances, skipped, pacs, {"fetch": _ms(start)})


async def push_study(
    request: StudyRequest, instances: list[SourceInstance], pacs: PacsClient | None
) -> StudyClassificationOut:
    """Instances sent in the request (already read, one study): ``answer``; reports are stored when a PACS is set."""
    skipped = [not_mr(instance.dataset) for instance in instances if not is_mr(instance.dataset)]
    mr = [instance for instance in instances if is_mr(instance.dataset)]
    study_uid = str(instances[0].dataset.StudyInstanceUID)
    return await answer(request, study_uid, mr, skipped, pacs, {"fetch": 0.0})


async def answer(
    request: StudyRequest,
    study_uid: str,
    instances: list[SourceInstance],
    skipped: list[SkippedOut],
    pacs: PacsClient | None,
    timings: dict[str, float],
) -> StudyClassificationOut:
    """Classify every slice, build one report per classified series, store them (when a PACS is set and storing
    is on), and say all of it in the JSON answer."""
    limit = request.settings.dicomweb_max_instances
    slices = sum(instance.frames for instance in instances)
    if slices > limit:
        # Each frame of a multi-frame instance is a slice to classify: the bound is on the work, not the files.
        raise too_many(slices, limit, what="slices (frames of multi-frame instances count one each)")
    start = time.perf_counter()
    classified, refused = await classify_instances(
        request.inference,
        instances,
        request.model,
        request.version,
        request.request_id,
        request.settings.dicomweb_concurrency,
    )
    timings["classify"] = _ms(start)
    await record_study(request.auditor, [(c.instance.data, c.frame, c.prediction.model_dump()) for c in classified])
    start = time.perf_counter()
    identity = ModelIdentity(classified[0].prediction.model, classified[0].prediction.version) if classified else None
    # highdicom builds in Python: off the event loop, so other requests keep being served meanwhile.
    reports: list[BuiltReport] = await asyncio.to_thread(_reports, classified, identity) if identity else []
    timings["report"] = _ms(start)
    start = time.perf_counter()
    store = pacs is not None and request.settings.dicomweb_store_reports and bool(reports)
    if store:
        await pacs.store([report.dataset for report in reports])  # type: ignore[union-attr]
    timings["store"] = _ms(start)
    skipped = skipped + refused
    summary = summarise(classified, len(skipped))
    bundle = build_bundle(study_uid, classified, identity, summary, reports) if request.fhir and identity else None
    return StudyClassificationOut(
        study_instance_uid=study_uid,
        model=identity.model if identity else request.model,
        version=identity.version if identity else None,
        slices=[item.out() for item in classified],
        skipped=skipped,
        summary=summary,
        reports=[
            ReportOut(
                source_series_instance_uid=report.source_series_uid,
                sop_instance_uid=report.sop_uid,
                series_instance_uid=report.series_uid,
                stored=store,
            )
            for report in reports
        ],
        timings_ms=timings,
        fhir=bundle,
    )


def _reports(classified: list[Classified], identity: ModelIdentity) -> list[BuiltReport]:
    """The reports, or 422 when a source's header cannot go into one (highdicom checks what it copies: e.g. a
    patient's sex outside M, F, O): the client's data, so never a 500, and its values are never quoted."""
    try:
        return build_reports(classified, identity)
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("report not buildable from the source headers (%s)", type(exc).__name__)
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            "The source instances' headers cannot be copied into a DICOM Structured Report (an attribute highdicom "
            "copies is missing or not valid DICOM); the slices were classified, but no report could be made.",
        ) from exc


COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


async def fetch_report(pacs: PacsClient, sop_uid: str) -> bytes:
    """One of this service's reports from the PACS, as a Part 10 file; 404 for anything else it holds (the route
    is not a way into the PACS)."""
    missing = ServiceError(ErrorCode.NOT_FOUND, "The DICOMweb server holds no report of this service with this UID.")
    found = await pacs.find_instance(sop_uid)
    if found is None or str(found.get("SOPClassUID", "")) != COMPREHENSIVE_3D_SR:
        raise missing
    dataset = await pacs.fetch(str(found.StudyInstanceUID), str(found.SeriesInstanceUID), sop_uid)
    if str(dataset.get("Manufacturer", "")) != MANUFACTURER:
        raise missing
    return part10_bytes(dataset)
