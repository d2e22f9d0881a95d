"""A study's slices are classifications like any other: each answered slice leaves one audit record (model,
version, the hash of its instance's file), nothing of the patient's or of the study's identifiers; with caller
tokens on, the study routes want one like the prediction routes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.orthanc import Orthanc
from deploy.processes import ManagedProcess
from tests.dicom_files import PATIENT_ID, PATIENT_NAME
from tests.dicom_study import Study
from tests.services.gateway.dicomweb.conftest import start_gateway
from tests.services.gateway.test_audit import records

TOKEN = "a-token-for-the-pacs-bridge"


@pytest.fixture(scope="module")
def audited_gateway(
    bundle_inference: ManagedProcess, orthanc: Orthanc, service_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ManagedProcess, Path]]:
    folder = tmp_path_factory.mktemp("study-audit")
    tokens = folder / "callers"
    tokens.write_text(f"pacs-bridge {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    settings = {key.removeprefix("BT_GATEWAY_").lower(): value for key, value in orthanc.gateway_env().items()}
    trail = folder / "trail.sqlite"
    settings.update(audit_uri=f"sqlite:///{trail}", api_tokens=str(tokens), dicomweb_store_reports="false")
    server = start_gateway(bundle_inference, service_logs / "gateway-study-audit.log", **settings)
    yield server, trail
    server.stop()


def test_each_slice_of_a_pulled_study_is_recorded_without_identifiers(
    audited_gateway: tuple[ManagedProcess, Path], pacs_study: Study
) -> None:
    server, trail = audited_gateway
    url = f"{server.url}/v1/studies/{pacs_study.study_uid}/classify"
    anonymous = httpx.post(url, params={"model": "cnn"}, timeout=300, trust_env=False)
    assert anonymous.status_code == 401, anonymous.text
    answer = httpx.post(
        url, params={"model": "cnn"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300, trust_env=False
    )
    assert answer.status_code == 200, answer.text
    slices = answer.json()["slices"]
    assert slices
    rows = records(trail, len(slices))
    assert len(rows) == len(slices)
    assert {row["caller"] for row in rows} == {"pacs-bridge"}
    assert {(row["model"], row["version"]) for row in rows} == {("cnn", answer.json()["version"])}
    hashes = {hashlib.sha256(data).hexdigest() for data in pacs_study.files.values()}
    assert {row["input_sha256"] for row in rows} <= hashes
    assert sorted(row["label"] for row in rows) == sorted(item["label"] for item in slices)
    stored = trail.read_bytes()
    for secret in (PATIENT_NAME, PATIENT_ID, pacs_study.study_uid, *pacs_study.files):
        assert secret.encode() not in stored
