"""Push: instances sent to the gateway as a STOW-RS body answer as a pull does, and their report lands in Orthanc;
what the routes refuse, and how (never a 500, never an echo); no PACS configured is a 503 that says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.processes import ManagedProcess
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, write_dicom
from tests.dicom_study import Study, stow_body
from tests.error_body import error_body
from tests.services.gateway.dicomweb.conftest import start_gateway

SECRETS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID)
# The no-PACS gateway's limits: a file, and a pushed body.
FILE_LIMIT = 400_000
PUSH_LIMIT = 2_000_000


def push(client: httpx.Client, files: list[bytes], **params: str) -> httpx.Response:
    body, content_type = stow_body(files)
    return client.post(
        "/v1/studies", params={"model": "ensemble", **params}, content=body, headers={"content-type": content_type}
    )


@pytest.fixture(scope="module")
def no_pacs_gateway(bundle_inference: ManagedProcess, service_logs: Path) -> Iterator[httpx.Client]:
    """A gateway with no DICOMweb server configured, and at most 3 instances per request."""
    server = start_gateway(
        bundle_inference, service_logs / "gateway-no-pacs.log", dicomweb_max_instances="3",
        max_upload_bytes=str(FILE_LIMIT), dicomweb_max_push_bytes=str(PUSH_LIMIT),
    )  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=300.0, trust_env=False) as http:
        yield http
    server.stop()


def test_a_push_answers_as_the_pull_and_stores_its_report(
    client: httpx.Client, pacs_study: Study
) -> None:  # fmt: skip
    series = pacs_study.series["16-bit"]
    files = [item for item in pacs_study.slices if item.series_uid == series]
    ct = next(uid for uid, modality in pacs_study.not_mr.items() if modality == "CT")
    pushed = push(client, [pacs_study.files[item.sop_uid] for item in files] + [pacs_study.files[ct]])
    assert pushed.status_code == 200, pushed.text
    assert not any(secret in pushed.text for secret in SECRETS)
    body = pushed.json()
    pulled = client.post(
        f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "ensemble", "series": series}
    ).json()  # fmt: skip
    assert body["study_instance_uid"] == pacs_study.study_uid
    assert [(s["sop_instance_uid"], s["label"], s["prediction_set"]) for s in body["slices"]] == [
        (s["sop_instance_uid"], s["label"], s["prediction_set"]) for s in pulled["slices"]
    ]
    for mine, theirs in zip(body["slices"], pulled["slices"], strict=True):
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)
    assert [(item["sop_instance_uid"], item["reason"]) for item in body["skipped"]] == [(ct, "NOT_MR")]
    (report,) = body["reports"]
    assert report["stored"] and report["source_series_instance_uid"] == series
    downloaded = client.get(f"/v1/reports/{report['sop_instance_uid']}")
    assert downloaded.status_code == 200


def test_push_refuses_what_is_not_a_stow_body(client: httpx.Client, pacs_study: Study) -> None:
    data = pacs_study.files[pacs_study.slices[0].sop_uid]
    wrong_type = client.post(
        "/v1/studies", params={"model": "cnn"}, files={"file": ("a.dcm", data)}
    )  # fmt: skip
    assert "multipart/related" in error_body(wrong_type, 422, "INVALID_REQUEST")["message"]
    body, content_type = stow_body([data])
    not_dicom_type = client.post(
        "/v1/studies", params={"model": "cnn"}, content=body,
        headers={"content-type": content_type.replace("application/dicom", "application/dicom+json")},
    )  # fmt: skip
    error_body(not_dicom_type, 422, "INVALID_REQUEST")
    not_dicom = push(client, [b"%PDF-1.4 not a DICOM file" * 10])
    error_body(not_dicom, 415, "INVALID_IMAGE")
    other = Study("1.2.3.4.5")
    other.add("8-bit", data)
    two_studies = push(client, [data, next(iter(other.files.values()))])
    assert "one study" in error_body(two_studies, 422, "INVALID_REQUEST")["message"]
    unknown_model = push(client, [data], model="nosuchmodel")
    error_body(unknown_model, 404, "MODEL_NOT_FOUND")
    for answer in (wrong_type, not_dicom_type, not_dicom, two_studies, unknown_model):
        assert not any(secret in answer.text for secret in SECRETS)


def test_pull_refuses_unknown_studies_and_malformed_uids(client: httpx.Client, pacs_study: Study) -> None:
    unknown = client.post("/v1/studies/1.2.3.999/classify", params={"model": "cnn"})
    error_body(unknown, 404, "NOT_FOUND")
    error_body(client.post("/v1/studies/1.2.x/classify", params={"model": "cnn"}), 422, "INVALID_REQUEST")
    no_model = client.post(f"/v1/studies/{pacs_study.study_uid}/classify")
    error_body(no_model, 422, "INVALID_REQUEST")


def test_without_a_pacs_the_pull_is_a_clear_503_and_the_push_still_answers(
    no_pacs_gateway: httpx.Client, pacs_study: Study
) -> None:
    for answer in (
        no_pacs_gateway.post(f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "cnn"}),
        no_pacs_gateway.get("/v1/reports/1.2.3.4"),
    ):
        error = error_body(answer, 503, "DICOMWEB_NOT_CONFIGURED")
        assert "BT_GATEWAY_DICOMWEB_URL" in error["message"]
    series = pacs_study.series["MONOCHROME1"]
    files = [pacs_study.files[item.sop_uid] for item in pacs_study.slices if item.series_uid == series]
    pushed = push(no_pacs_gateway, files)
    assert pushed.status_code == 200, pushed.text
    assert [report["stored"] for report in pushed.json()["reports"]] == [False]


def test_more_instances_than_the_limit_is_413(no_pacs_gateway: httpx.Client, pacs_study: Study) -> None:
    files = [pacs_study.files[item.sop_uid] for item in pacs_study.slices[:4]]
    error = error_body(push(no_pacs_gateway, files), 413, "TOO_MANY_INSTANCES")
    assert error["details"] == {"instances": 4, "max_instances": 3}


def test_frames_count_as_slices_against_the_limit(no_pacs_gateway: httpx.Client, pacs_study: Study) -> None:
    multi = next(item.sop_uid for item in pacs_study.slices if item.frame is not None)
    one = next(item.sop_uid for item in pacs_study.slices if item.frame is None)
    # One 3-frame instance and one slice: 2 instances, 4 slices, above the limit of 3.
    error = error_body(
        push(no_pacs_gateway, [pacs_study.files[multi], pacs_study.files[one]]), 413, "TOO_MANY_INSTANCES"
    )
    assert error["details"] == {"instances": 4, "max_instances": 3} and "4 slices" in error["message"]


def test_a_pushed_file_or_body_above_its_limit_is_413(no_pacs_gateway: httpx.Client) -> None:
    big = write_dicom(np.zeros((500, 1000), np.uint8))
    error = error_body(push(no_pacs_gateway, [big]), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": FILE_LIMIT}
    within = write_dicom(np.zeros((600, 600), np.uint8))
    error = error_body(push(no_pacs_gateway, [within] * 6), 413, "FILE_TOO_LARGE")
    assert error["details"] == {"max_bytes": PUSH_LIMIT}


def test_every_status_is_declared_in_openapi(client: httpx.Client) -> None:
    paths: dict[str, Any] = client.get("/openapi.json").json()["paths"]
    pull = paths["/v1/studies/{study_uid}/classify"]["post"]["responses"]
    assert {"200", "404", "413", "422", "502", "503"} <= set(pull)
    assert "DICOMWEB_NOT_CONFIGURED" in pull["503"]["description"]
    assert "TOO_MANY_INSTANCES" in pull["413"]["description"]
    assert {"200", "404", "413", "415", "422", "502", "503"} <= set(paths["/v1/studies"]["post"]["responses"])
    assert {"200", "404", "422", "502", "503"} <= set(paths["/v1/reports/{sop_uid}"]["get"]["responses"])
