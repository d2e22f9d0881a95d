"""Pull: the gateway finds a study in Orthanc (QIDO-RS), fetches its MR instances (WADO-RS), classifies every slice
through inference as /v1/predict does, lists what it skipped and why, and stores one TID 1500 SR per series."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dicom_files import PATIENT_ID, PATIENT_NAME
from tests.dicom_study import Study

MODEL = "ensemble"
TOLERANCE = 1e-3
SECRETS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID)


@pytest.fixture(scope="module")
def pulled(client: httpx.Client, pacs_study: Study) -> dict[str, Any]:
    answer = client.post(f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": MODEL})
    assert answer.status_code == 200, answer.text
    assert not any(secret in answer.text for secret in SECRETS)
    return answer.json()


@pytest.fixture(scope="module")
def predicted(client: httpx.Client, pacs_study: Study) -> dict[bytes, dict[str, Any]]:
    """/v1/predict's answer for the JPEG behind each slice."""
    answers: dict[bytes, dict[str, Any]] = {}
    for item in pacs_study.slices:
        if item.jpeg not in answers:
            answer = client.post("/v1/predict", params={"model": MODEL}, files={"file": ("s.jpg", item.jpeg)})
            assert answer.status_code == 200, answer.text
            answers[item.jpeg] = answer.json()
    return answers


def by_slice(body: dict[str, Any]) -> dict[tuple[str, int | None], dict[str, Any]]:
    return {(item["sop_instance_uid"], item["frame"]): item for item in body["slices"]}


def test_every_mr_slice_answers_as_predict_does_on_its_pixels(
    pulled: dict[str, Any], predicted: dict[bytes, dict[str, Any]], pacs_study: Study
) -> None:
    slices = by_slice(pulled)
    assert set(slices) == {(item.sop_uid, item.frame) for item in pacs_study.slices}
    assert pulled["model"] == MODEL and pulled["version"] == "1"
    for item in pacs_study.slices:
        got, expected = slices[(item.sop_uid, item.frame)], predicted[item.jpeg]
        assert got["series_instance_uid"] == item.series_uid
        assert got["label"] == expected["label"], item.kind
        for name, probability in expected["probabilities"].items():
            assert abs(got["probabilities"][name] - probability) <= TOLERANCE, (item.kind, name)
        assert got["prediction_set"] == expected["prediction_set"], item.kind
        assert got["referral"] == expected["referral"]
        assert got["ood"]["guard_version"] == expected["ood"]["guard_version"]
        assert abs(got["ood"]["score"] - expected["ood"]["score"]) <= 1e-3


def test_other_modalities_and_refused_slices_are_listed_with_their_reason(
    pulled: dict[str, Any], pacs_study: Study
) -> None:
    skipped = {item["sop_instance_uid"]: item for item in pulled["skipped"]}
    # The study also holds the reports earlier tests' pulls stored into it (modality SR): skipped as not MR too.
    reports = {uid for uid, item in skipped.items() if item["modality"] == "SR" and uid not in pacs_study.files}
    assert set(skipped) - reports == set(pacs_study.not_mr) | set(pacs_study.not_a_brain)
    assert all(skipped[uid]["reason"] == "NOT_MR" for uid in reports)
    for uid, modality in pacs_study.not_mr.items():
        assert skipped[uid]["reason"] == "NOT_MR" and skipped[uid]["modality"] == modality
    for uid in pacs_study.not_a_brain:
        assert skipped[uid]["reason"] == "NOT_A_BRAIN_MRI"
        assert skipped[uid]["error"]["status"] == 422


def test_the_summary_names_the_most_confident_tumour_finding(pulled: dict[str, Any]) -> None:
    summary, slices = pulled["summary"], pulled["slices"]
    assert summary["slices_per_label"] == dict(Counter(item["label"] for item in slices))
    assert summary["classified"] == len(slices) and summary["skipped"] == len(pulled["skipped"])
    assert summary["referred"] == sum(item["referral"] for item in slices)
    tumours = [item for item in slices if item["label"] != "notumor"]
    best = max(tumours, key=lambda item: item["probabilities"][item["label"]])
    assert (summary["label"], summary["sop_instance_uid"]) == (best["label"], best["sop_instance_uid"])
    assert summary["probability"] == pytest.approx(best["probabilities"][best["label"]])


def test_one_stored_report_per_classified_series(pulled: dict[str, Any], pacs_study: Study) -> None:
    reports = pulled["reports"]
    classified_series = {item["series_instance_uid"] for item in pulled["slices"]}
    assert [report["source_series_instance_uid"] for report in reports] == list(dict.fromkeys(
        item["series_instance_uid"] for item in pulled["slices"]
    ))  # fmt: skip
    assert {report["source_series_instance_uid"] for report in reports} == classified_series
    assert all(report["stored"] for report in reports)
    # New UIDs for the report only.
    new = {report["sop_instance_uid"] for report in reports} | {report["series_instance_uid"] for report in reports}
    assert not new & (set(pacs_study.files) | set(pacs_study.series.values()) | {pacs_study.study_uid})
    assert set(pulled["timings_ms"]) == {"fetch", "classify", "report", "store"}


def test_one_series_only(client: httpx.Client, pacs_study: Study) -> None:
    series = pacs_study.series["MONOCHROME1"]
    answer = client.post(
        f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "cnn", "series": series}
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {item["series_instance_uid"] for item in body["slices"]} == {series}
    assert body["model"] == "cnn" and not body["skipped"]
    assert [report["source_series_instance_uid"] for report in body["reports"]] == [series]


def test_no_patient_data_in_any_log(pulled: dict[str, Any], service_logs: Path) -> None:
    for name in ("gateway-pacs.log", "inference-bundle.log"):
        text = (service_logs / name).read_text(errors="replace")
        assert not any(secret in text for secret in SECRETS), name
