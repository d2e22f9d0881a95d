"""Studies over DICOMweb: pull one from the configured PACS, or take one pushed (STOW-RS style); each MR slice
classified as /v1/predict classifies it; the results as JSON and as DICOM Structured Reports (docs/hospital.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from services.gateway.deps import InferenceDep, SettingsDep
from services.gateway.dicomweb.pacs import PacsClient
from services.gateway.dicomweb.schemas import StudyClassificationOut
from shared.kit.audit.requests import AuditorDep
from shared.kit.auth import CALLER_RESPONSES
from shared.kit.errors import ErrorCode
from shared.kit.params import ModelQuery, VersionQuery
from shared.kit.service import RequestIdDep, error_responses, json_answer
from shared.kit.uploads import read_body

router = APIRouter(prefix="/v1", tags=["studies"])

# The push route's path ends so: its body holds several files, so the one-file upload limit exempts it.
STOW_PATH_SUFFIX = "/v1/studies"
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"

StudyUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="Study Instance UID.")]
SeriesQuery = Annotated[
    str | None,
    Query(pattern=UID_PATTERN, max_length=64, description="Series Instance UID: classify this series only."),
]
FhirQuery = Annotated[
    bool, Query(description="Also answer the result as a FHIR R5 Bundle (DiagnosticReport + Observations) in `fhir`.")
]
ReportUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="The report's SOP Instance UID.")]

NOT_CONFIGURED_503 = (
    f"{ErrorCode.DICOMWEB_NOT_CONFIGURED}: no DICOMweb server is configured (BT_GATEWAY_DICOMWEB_URL). "
    "UPSTREAM_UNAVAILABLE / UPSTREAM_TIMEOUT: the DICOMweb server or inference cannot be reached or is too slow."
)
TOO_MANY_413 = (
    f"{ErrorCode.TOO_MANY_INSTANCES}: more instances than BT_GATEWAY_DICOMWEB_MAX_INSTANCES in one request; "
    "FILE_TOO_LARGE: a pushed body above BT_GATEWAY_DICOMWEB_MAX_PUSH_BYTES, or a file in it above the upload limit."
)
STUDY_ANSWER = (
    "Answers one entry per classified slice (SOP Instance UID, frame, label, probabilities, the guard's verdict, "
    "prediction_set, referral), the instances skipped with their reason (NOT_MR for another modality; inference's "
    "own code, e.g. NOT_A_BRAIN_MRI, for a slice it refused), a study summary (the label of the most confident "
    "tumour finding, slices per label) and one DICOM Comprehensive 3D SR (TID 1500) per classified series, "
    "stored with STOW-RS unless BT_GATEWAY_DICOMWEB_STORE_REPORTS is false, then downloadable from "
    "GET /v1/reports/{sop_instance_uid}. No patient data is ever in the answer."
)


# The handlers import the study's way (pydicom, highdicom, fhir.resources: about half a second) on the first study
# request, not at the gateway's start-up: README command 1 needs no PACS.


def get_pacs(settings: SettingsDep) -> PacsClient:
    """The configured DICOMweb server; 503 DICOMWEB_NOT_CONFIGURED when there is none."""
    return PacsClient(settings)


def get_optional_pacs(settings: SettingsDep) -> PacsClient | None:
    return PacsClient(settings) if settings.dicomweb_url else None


PacsDep = Annotated[PacsClient, Depends(get_pacs)]
OptionalPacsDep = Annotated[PacsClient | None, Depends(get_optional_pacs)]


@router.post(
    "/studies/{study_uid}/classify",
    response_model=StudyClassificationOut,
    summary="Classify a study (or one series) pulled from the PACS",
    description="Finds the study's instances with QIDO-RS on the configured DICOMweb server, fetches the MR ones "
    "with WADO-RS and classifies every slice (every frame of a multi-frame instance) with `model`. " + STUDY_ANSWER,
    responses={
        **CALLER_RESPONSES,
        **error_responses(
            404,
            413,
            422,
            502,
            503,
            descriptions={
                404: "NOT_FOUND: the DICOMweb server holds no instance of the study (or series); MODEL_NOT_FOUND or "
                "VERSION_NOT_FOUND.",
                413: TOO_MANY_413,
                422: "INVALID_REQUEST: a malformed UID or parameter.",
                502: "UPSTREAM_ERROR: the DICOMweb server refused the request or answered something that is not "
                "DICOMweb.",
                503: NOT_CONFIGURED_503,
            },
        ),
    },
)
async def classify_study(
    pacs: PacsDep,
    inference: InferenceDep,
    auditor: AuditorDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    study_uid: StudyUid,
    model: ModelQuery,
    version: VersionQuery = None,
    series: SeriesQuery = None,
    fhir: FhirQuery = False,
) -> Response:
    from services.gateway.dicomweb.study import StudyRequest, pull_study

    request = StudyRequest(inference, settings, model, version, request_id, auditor, fhir)
    return json_answer(await pull_study(request, pacs, study_uid, series))


@router.post(
    "/studies",
    response_model=StudyClassificationOut,
    summary="Classify instances pushed by a PACS or a modality (STOW-RS style)",
    description='Takes a body of content type `multipart/related; type="application/dicom"`, one DICOM Part 10 '
    "file per part, all of one study (at most BT_GATEWAY_DICOMWEB_MAX_INSTANCES). Works without a DICOMweb "
    "server; with one, the reports are stored there. " + STUDY_ANSWER,
    responses={
        **CALLER_RESPONSES,
        **error_responses(
            404,
            413,
            415,
            422,
            502,
            503,
            descriptions={
                404: "MODEL_NOT_FOUND or VERSION_NOT_FOUND.",
                413: TOO_MANY_413,
                415: "INVALID_IMAGE: a part is not a readable DICOM Part 10 file.",
                422: "INVALID_REQUEST: not a multipart/related body of application/dicom parts, instances of several "
                "studies, or a malformed parameter.",
                502: "UPSTREAM_ERROR: the DICOMweb server refused to store a report.",
                503: "UPSTREAM_UNAVAILABLE / UPSTREAM_TIMEOUT: inference or the DICOMweb server cannot be reached.",
            },
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def receive_instances(
    http_request: Request,
    pacs: OptionalPacsDep,
    inference: InferenceDep,
    auditor: AuditorDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    model: ModelQuery,
    version: VersionQuery = None,
    fhir: FhirQuery = False,
) -> Response:
    from services.gateway.dicomweb.push import read_instances, split_parts
    from services.gateway.dicomweb.study import StudyRequest, push_study

    body = await read_body(http_request, settings.dicomweb_max_push_bytes)
    parts = split_parts(body, http_request.headers.get("content-type", ""))
    instances = read_instances(parts, settings.dicomweb_max_instances, settings.max_upload_bytes)
    request = StudyRequest(inference, settings, model, version, request_id, auditor, fhir)
    return json_answer(await push_study(request, instances, pacs))


@router.get(
    "/reports/{sop_uid}",
    summary="Download a Structured Report this service stored",
    description="The report (DICOM Part 10, application/dicom) as the DICOMweb server holds it, fetched with "
    "WADO-RS. Only this service's own reports (Comprehensive 3D SR of manufacturer brain-tumor-zoo) are served.",
    responses={
        200: {"content": {"application/dicom": {}}, "description": "The report."},
        **error_responses(
            404,
            422,
            502,
            503,
            descriptions={
                404: "NOT_FOUND: the DICOMweb server holds no report of this service with this UID.",
                422: "INVALID_REQUEST: a malformed UID.",
                502: "UPSTREAM_ERROR: the DICOMweb server answered something that is not DICOMweb.",
                503: NOT_CONFIGURED_503,
            },
        ),
    },
)
async def download_report(pacs: PacsDep, sop_uid: ReportUid) -> Response:
    from services.gateway.dicomweb.study import fetch_report

    return Response(await fetch_report(pacs, sop_uid), media_type="application/dicom")
