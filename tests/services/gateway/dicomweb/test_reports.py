"""The Structured Reports a pull stored: fetched back from Orthanc over WADO-RS (and from the gateway's download
route), parsed by highdicom as a TID 1500 Measurement Report, their codes, values and references matching the JSON
answer, their identifiers copied from the source, and dciodvfy (Debian's dicom3tools) finding no error."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from deploy.orthanc import Orthanc
from services.gateway.dicomweb.report import CLASS_CODES, FINDING_SITES, LOCAL_SCHEME, SERIES_DESCRIPTION
from tests.dicom_files import PATIENT_ID, PATIENT_NAME
from tests.dicom_study import Study

DCIODVFY = "/usr/bin/dciodvfy"


@pytest.fixture(scope="module")
def pulled(client: httpx.Client, pacs_study: Study) -> dict[str, Any]:
    answer = client.post(f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "ensemble"})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def stored(pulled: dict[str, Any], orthanc: Orthanc, pacs_study: Study) -> dict[str, pydicom.Dataset]:
    """Each report as Orthanc gives it back over WADO-RS, by the report's SOP Instance UID."""
    wado = DICOMwebClient(orthanc.dicomweb_url)
    wado._session.auth = (orthanc.user.username, orthanc.user.password)
    wado._session.trust_env = False
    return {
        report["sop_instance_uid"]: wado.retrieve_instance(
            pacs_study.study_uid, report["series_instance_uid"], report["sop_instance_uid"]
        )
        for report in pulled["reports"]
    }


def code_of(concept: Any) -> tuple[str, str]:
    """(value, scheme) of a pydicom Code or of a coded item as read back (highdicom's CodedConcept or a dataset)."""
    if isinstance(concept, Code):
        return (concept.value, concept.scheme_designator)
    return (str(concept.CodeValue), str(concept.CodingSchemeDesignator))


def test_reports_parse_as_tid_1500_and_match_the_answer(
    pulled: dict[str, Any], stored: dict[str, pydicom.Dataset]
) -> None:
    slices = {(item["sop_instance_uid"], item["frame"]): item for item in pulled["slices"]}
    seen = set()
    for report in pulled["reports"]:
        sr = hd.sr.Comprehensive3DSR.from_dataset(stored[report["sop_instance_uid"]])
        content = sr.content
        assert isinstance(content, hd.sr.MeasurementReport)
        assert code_of(sr.ConceptNameCodeSequence[0]) == ("126000", "DCM")  # Imaging Measurement Report
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        groups = content.get_image_measurement_groups()
        assert len(groups) == sum(item["series_instance_uid"] == report["source_series_instance_uid"]
                                  for item in pulled["slices"])  # fmt: skip
        for group in groups:
            (source,) = group.source_images
            frames = source.referenced_frame_numbers
            key = (source.referenced_sop_instance_uid, frames[0] - 1 if frames else None)
            expected = slices[key]
            seen.add(key)
            evaluations = {code_of(item.name): code_of(item.value) for item in group.get_qualitative_evaluations()}
            label = expected["label"]
            assert evaluations[code_of(codes.SCT.Classification)] == code_of(CLASS_CODES[label])
            present = codes.SCT.Absent if label == "notumor" else codes.SCT.Present
            assert evaluations[code_of(codes.SCT.Neoplasm)] == code_of(present)
            assert code_of(group.finding_type) == code_of(codes.SCT.Neoplasm)
            assert [code_of(site.value) for site in group.finding_sites] == [code_of(FINDING_SITES[label])]
            values = {item.name.value: item.value for item in group.get_measurements()}
            assert {name: float(values[f"p-{name}"]) for name in expected["probabilities"]} == pytest.approx(
                expected["probabilities"], abs=1e-6
            )
            assert all(item.name.scheme_designator == LOCAL_SCHEME for item in group.get_measurements())
    # Every slice of every series is in a report, with its frame where it has one.
    assert seen == set(slices)


def test_reports_say_who_made_them_and_that_nobody_checked(
    pulled: dict[str, Any], stored: dict[str, pydicom.Dataset]
) -> None:
    for report in stored.values():
        sr = hd.sr.Comprehensive3DSR.from_dataset(report)
        assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
        assert "not for diagnostic use" in sr.SeriesDescription == SERIES_DESCRIPTION
        (observer,) = sr.content.get_observer_contexts()
        device = {item.name.meaning: getattr(item, "value", None) for item in observer}
        assert device["Device Observer Name"] == "brain-tumor-ensemble"
        assert device["Device Observer Serial Number"] == pulled["version"]
        assert device["Device Observer Physical Location During Observation"] == (
            f"models:/brain-tumor-ensemble/{pulled['version']}"
        )
        group = sr.content.get_image_measurement_groups()[0]
        items = group[0].ContentSequence  # the group's container's children (TID 4019 among them)
        algorithm = {item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue") for item in items}
        assert algorithm["Algorithm Name"] == "brain-tumor-ensemble"
        assert algorithm["Algorithm Version"] == pulled["version"]


def test_patient_and_study_identifiers_are_copied_from_the_source(
    stored: dict[str, pydicom.Dataset], pacs_study: Study
) -> None:
    source = pydicom.dcmread(io.BytesIO(next(iter(pacs_study.files.values()))))
    for report in stored.values():
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyID",
                        "AccessionNumber", "StudyDate"):  # fmt: skip
            assert report.get(keyword) == source.get(keyword), keyword
        assert report.SOPInstanceUID not in pacs_study.files
        assert report.SeriesInstanceUID not in pacs_study.series.values()


def test_the_download_route_gives_the_stored_report_and_nothing_else(
    client: httpx.Client, pulled: dict[str, Any], stored: dict[str, pydicom.Dataset], pacs_study: Study
) -> None:
    uid = pulled["reports"][0]["sop_instance_uid"]
    answer = client.get(f"/v1/reports/{uid}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(answer.content)).SOPInstanceUID == uid
    # An image of the study is in the PACS, but is not one of this service's reports.
    image = pacs_study.slices[0].sop_uid
    refused = client.get(f"/v1/reports/{image}")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "NOT_FOUND"
    assert client.get("/v1/reports/1.2.3.4").status_code == 404
    assert client.get("/v1/reports/not-a-uid").status_code == 422


def test_dciodvfy_finds_no_error(stored: dict[str, pydicom.Dataset], tmp_path: Path) -> None:
    for uid, report in stored.items():
        path = tmp_path / f"{uid}.dcm"
        report.save_as(path, enforce_file_format=True)
        checked = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        lines = (checked.stdout + checked.stderr).splitlines()
        assert lines[0].strip() == "Comprehensive3DSR", lines[:3]
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, errors
        # What it warns of: only the local coding scheme of the classes, which it cannot know.
        assert all(LOCAL_SCHEME in line for line in lines if line.startswith("Warning")), lines


def test_reports_hold_no_other_patient_data_than_the_copied_identifiers(stored: dict[str, pydicom.Dataset]) -> None:
    for report in stored.values():
        text = str(report.ContentSequence)
        assert PATIENT_NAME not in text and PATIENT_ID not in text
