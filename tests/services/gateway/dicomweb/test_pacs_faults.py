"""The gateway when the PACS is not as configured: down, refusing its user, or told not to store reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from deploy.orthanc import Orthanc
from deploy.processes import ManagedProcess, free_port, loopback_url
from tests.dicom_study import Study
from tests.error_body import error_body
from tests.services.gateway.dicomweb.conftest import start_gateway


@pytest.fixture
def gateway_with(
    bundle_inference: ManagedProcess, service_logs: Path
) -> Iterator[Callable[..., httpx.Client]]:  # fmt: skip
    """``make(**BT_GATEWAY_settings) -> client`` of a gateway process of its own; all stopped at teardown."""
    started: list[tuple[ManagedProcess, httpx.Client]] = []

    def make(**settings: str) -> httpx.Client:
        server = start_gateway(bundle_inference, service_logs / f"gateway-faults-{len(started)}.log", **settings)
        client = httpx.Client(base_url=server.url, timeout=300.0, trust_env=False)
        started.append((server, client))
        return client

    yield make
    for server, client in started:
        client.close()
        server.stop()


def classify(client: httpx.Client, study: Study, series: str) -> httpx.Response:
    return client.post(f"/v1/studies/{study.study_uid}/classify", params={"model": "cnn", "series": series})


def test_a_pacs_that_is_down_is_503_and_one_refusing_the_user_is_502(
    gateway_with: Callable[..., httpx.Client], orthanc: Orthanc, pacs_study: Study
) -> None:
    series = pacs_study.series["8-bit"]
    down = gateway_with(dicomweb_url=f"{loopback_url(free_port())}/dicom-web")
    answer = classify(down, pacs_study, series)
    assert "cannot be reached" in error_body(answer, 503, "UPSTREAM_UNAVAILABLE")["message"]
    assert answer.headers["retry-after"]
    wrong_user = gateway_with(
        dicomweb_url=orthanc.dicomweb_url, dicomweb_username=orthanc.user.username, dicomweb_password="not-it"
    )
    error = error_body(classify(wrong_user, pacs_study, series), 502, "UPSTREAM_ERROR")
    assert "credentials" in error["message"] and "not-it" not in error["message"]


def test_with_storing_off_the_report_is_made_but_not_stored(
    gateway_with: Callable[..., httpx.Client], orthanc: Orthanc, pacs_study: Study
) -> None:
    settings = {key.removeprefix("BT_GATEWAY_").lower(): value for key, value in orthanc.gateway_env().items()}
    client = gateway_with(**settings, dicomweb_store_reports="false")
    answer = classify(client, pacs_study, pacs_study.series["MONOCHROME1"])
    assert answer.status_code == 200, answer.text
    (report,) = answer.json()["reports"]
    assert report["stored"] is False
    found = httpx.get(
        f"{orthanc.dicomweb_url}/instances", params={"SOPInstanceUID": report["sop_instance_uid"]},
        auth=orthanc.user.httpx_auth(), timeout=30, trust_env=False,
    )  # fmt: skip
    assert found.status_code in (200, 204) and (found.status_code == 204 or found.json() == [])
    error_body(client.get(f"/v1/reports/{report['sop_instance_uid']}"), 404, "NOT_FOUND")


def test_a_study_above_the_limit_is_413_not_truncated(
    gateway_with: Callable[..., httpx.Client], orthanc: Orthanc, pacs_study: Study
) -> None:
    settings = {key.removeprefix("BT_GATEWAY_").lower(): value for key, value in orthanc.gateway_env().items()}
    client = gateway_with(**settings, dicomweb_max_instances="3")
    answer = client.post(f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "cnn"})
    error = error_body(answer, 413, "TOO_MANY_INSTANCES")
    assert error["details"] == {"max_instances": 3} and "more than 3" in error["message"]
    # One series within the limit still answers.
    assert classify(client, pacs_study, pacs_study.series["MONOCHROME1"]).status_code == 200
