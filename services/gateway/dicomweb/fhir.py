"""The same result for an EHR: a FHIR R5 Bundle (type collection) of one DiagnosticReport and one Observation per
classified slice, validated by fhir.resources (``?fhir=true`` on the study routes).

What it says is what the JSON answer and the Structured Report say, coded alike (report.py's codes): each Observation
is the slice's class (SNOMED CT "Neoplasm" observed, the class in the local code system) with the class
probabilities as components, its finding site, the model as device, derived from the imaging study. Status
``preliminary``: nobody has verified it. No ``subject``: the answer carries no patient data, so the EHR links the
report to its patient through the imaging study's UID (``study``, ``derivedFrom``) and the SR's UIDs (``identifier``).
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.bundle import Bundle

from services.gateway.dicomweb.classify import Classified
from services.gateway.dicomweb.report import CLASS_CODES, FINDING_SITES, BuiltReport, ModelIdentity, probability_code
from services.gateway.dicomweb.schemas import SummaryOut

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
# The local code system of report.py's 99BTZOO scheme, as a FHIR system URI.
LOCAL_SYSTEM = "urn:brain-tumor-zoo:codes"
DICOM_UID_SYSTEM = "urn:dicom:uid"
IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
# LOINC 18748-4: the report of a diagnostic imaging study.
REPORT_CODE = {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}]}
NEOPLASM = {"coding": [{"system": SNOMED, "code": "108369006", "display": "Neoplasm"}], "text": "Tumour class (AI)"}


def _uid(value: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{value}"}


def _local(code: Any) -> dict[str, Any]:
    return {"coding": [{"system": LOCAL_SYSTEM, "code": code.value, "display": code.meaning}], "text": code.meaning}


def _observation(item: Classified, study: dict[str, Any], device: dict[str, Any]) -> dict[str, Any]:
    prediction = item.prediction
    site = FINDING_SITES[prediction.label]
    frame = "" if item.frame is None else f", frame {item.frame}"
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [IMAGING],
        "code": NEOPLASM,
        "valueCodeableConcept": _local(CLASS_CODES[prediction.label]),
        "bodySite": {"coding": [{"system": SNOMED, "code": site.value, "display": site.meaning}]},
        "device": device,
        "derivedFrom": [study],
        "identifier": [_uid(item.instance.sop_uid)],
        "note": [{"text": f"Source image SOP Instance UID {item.instance.sop_uid}{frame}."}],
        "component": [
            {
                "code": _local(probability_code(name)),
                "valueQuantity": {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"},
            }
            for name, value in prediction.probabilities.items()
            if name in CLASS_CODES
        ],
    }
    if prediction.referral:
        observation["note"].append({"text": f"Refer to a radiologist: {prediction.referral_reason}."})
    return observation


def build_bundle(
    study_uid: str,
    classified: list[Classified],
    identity: ModelIdentity,
    summary: SummaryOut,
    reports: list[BuiltReport],
) -> dict[str, Any]:
    """The Bundle as JSON (a dict), validated against FHIR R5 by fhir.resources."""
    study = {"type": "ImagingStudy", "identifier": _uid(study_uid)}
    device = {"display": f"{identity.registered_name} version {identity.version}",
              "identifier": {"system": "urn:mlflow:model", "value": identity.registry_uri}}  # fmt: skip
    observations = [(f"urn:uuid:{uuid.uuid4()}", _observation(item, study, device)) for item in classified]
    counts = ", ".join(f"{label} {count}" for label, count in summary.slices_per_label.items())
    finding = summary.label if summary.probability is None else f"{summary.label} ({summary.probability:.3f})"
    report = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [RADIOLOGY],
        "code": REPORT_CODE,
        "identifier": [_uid(built.sop_uid) for built in reports],
        "study": [study],
        "result": [{"reference": url} for url, _ in observations],
        "conclusion": f"Most confident tumour finding: {finding}; slices per label: {counts}. Produced by "
        f"{identity.registered_name} version {identity.version}, unverified: not for diagnostic use.",
    }
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": report}]
    entries += [{"fullUrl": url, "resource": observation} for url, observation in observations]
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "entry": entries})
    return bundle.model_dump(mode="json", exclude_none=True)
