"""The PACS the DICOMweb tests run against: Debian's Orthanc with its DICOMweb plugin, on loopback, with a user."""

from __future__ import annotations

import httpx
from dicomweb_client import DICOMwebClient

from deploy.orthanc import Orthanc
from tests.dicom_study import Study


def test_orthanc_serves_the_study_over_dicomweb_to_its_user_only(orthanc: Orthanc, pacs_study: Study) -> None:
    anonymous = httpx.get(f"{orthanc.dicomweb_url}/studies", timeout=10, trust_env=False)
    assert anonymous.status_code == 401
    session = DICOMwebClient(orthanc.dicomweb_url)
    session._session.auth = (orthanc.user.username, orthanc.user.password)
    session._session.trust_env = False
    found = session.search_for_instances(study_instance_uid=pacs_study.study_uid, fields=["Modality"])
    modalities = {item["00080018"]["Value"][0]: item.get("00080060", {}).get("Value", [None])[0] for item in found}
    # Besides the study's files: only reports other tests' pulls stored into it.
    assert set(pacs_study.files) <= set(modalities)
    assert {modalities[uid] for uid in set(modalities) - set(pacs_study.files)} <= {"SR"}
    # What the study's non-MR instances say of themselves (None: no modality at all).
    assert {uid: modalities[uid] for uid in pacs_study.not_mr} == pacs_study.not_mr
    assert {modalities[s.sop_uid] for s in pacs_study.slices} == {"MR"}
