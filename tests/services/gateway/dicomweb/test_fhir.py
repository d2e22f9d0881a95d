"""The optional FHIR R5 form of a result (``fhir=true``): a preliminary DiagnosticReport and one Observation per
slice, valid for fhir.resources, saying what the JSON answer says, with no patient data."""

from __future__ import annotations

import json

import httpx
import pytest
from fhir.resources.bundle import Bundle

from tests.dicom_files import PATIENT_ID, PATIENT_NAME
from tests.dicom_study import Study


def test_the_fhir_bundle_says_what_the_answer_says(client: httpx.Client, pacs_study: Study) -> None:
    series = pacs_study.series["multi-frame"]
    answer = client.post(
        f"/v1/studies/{pacs_study.study_uid}/classify",
        params={"model": "ensemble", "series": series, "fhir": "true"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    bundle = Bundle.model_validate(body["fhir"])
    (report, *observations) = [entry.resource for entry in bundle.entry]
    assert report.__resource_type__ == "DiagnosticReport" and report.status == "preliminary"
    assert report.subject is None
    assert [item.value for item in report.identifier] == [f"urn:oid:{r['sop_instance_uid']}" for r in body["reports"]]
    assert report.study[0].identifier.value == f"urn:oid:{pacs_study.study_uid}"
    assert [ref.reference for ref in report.result] == [entry.fullUrl for entry in bundle.entry[1:]]
    assert body["summary"]["label"] in report.conclusion and "not for diagnostic use" in report.conclusion
    assert len(observations) == len(body["slices"]) == 3
    for observation, item in zip(observations, body["slices"], strict=True):
        assert observation.status == "preliminary" and observation.subject is None
        assert observation.valueCodeableConcept.coding[0].code == item["label"]
        assert observation.identifier[0].value == f"urn:oid:{item['sop_instance_uid']}"
        assert f"frame {item['frame']}" in observation.note[0].text
        probabilities = {c.code.coding[0].code.removeprefix("p-"): float(c.valueQuantity.value)
                         for c in observation.component}  # fmt: skip
        assert probabilities == pytest.approx(item["probabilities"], abs=1e-6)
        assert observation.bodySite.coding[0].system == "http://snomed.info/sct"
        assert observation.device.identifier.value == f"models:/brain-tumor-ensemble/{body['version']}"
    text = json.dumps(body["fhir"])
    assert PATIENT_NAME not in text and PATIENT_ID not in text


def test_without_fhir_the_answer_has_none(client: httpx.Client, pacs_study: Study) -> None:
    series = pacs_study.series["MONOCHROME1"]
    answer = client.post(f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "cnn", "series": series})
    assert answer.status_code == 200 and answer.json()["fhir"] is None
