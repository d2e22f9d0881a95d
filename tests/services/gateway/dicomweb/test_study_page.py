"""The study page in a real browser (Debian's Chromium through Playwright): a study opened by its UID from the
PACS shows every slice's answer and the study summary, as the API answers them."""

from __future__ import annotations

from typing import Any

import httpx

from deploy.processes import ManagedProcess
from tests.dicom_files import PATIENT_ID, PATIENT_NAME
from tests.dicom_study import Study
from tests.services.gateway import test_web_browser as web

browser_page = web.browser_page


def test_a_study_opened_by_uid_shows_each_slice_and_the_summary(
    browser_page: Any, pacs_gateway: ManagedProcess, client: httpx.Client, pacs_study: Study
) -> None:
    series = pacs_study.series["8-bit"]
    expected = client.post(
        f"/v1/studies/{pacs_study.study_uid}/classify", params={"model": "cnn", "series": series}
    ).json()  # fmt: skip
    page = browser_page
    page.goto(f"{pacs_gateway.url}/study?study={pacs_study.study_uid}&series={series}&model=cnn")
    finding = page.locator(".study-finding")
    finding.wait_for()
    assert finding.get_attribute("data-label") == expected["summary"]["label"]
    rows = page.locator("#study-slices tbody tr")
    assert rows.count() == len(expected["slices"])
    for index, item in enumerate(expected["slices"]):
        row = rows.nth(index)
        assert row.get_attribute("data-sop") == item["sop_instance_uid"]
        assert row.locator(".study-label").inner_text() == item["label"]
    skipped = page.locator("#study-skipped").inner_text()
    assert "NOT_A_BRAIN_MRI" in skipped
    reports = page.locator("#study-reports a")
    assert reports.count() == 1
    # Each pull makes a new report: the page's link downloads the one its own pull stored.
    href = reports.first.get_attribute("href")
    assert href.startswith("/v1/reports/") and href != f"/v1/reports/{expected['reports'][0]['sop_instance_uid']}"
    assert client.get(href).headers["content-type"] == "application/dicom"
    text = page.locator("main").inner_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert not page.script_errors
    # The form opens another study by UID: one that the PACS does not hold says so.
    page.fill("#study-uid", "1.2.3.999")
    page.fill("#series-uid", "")
    page.click("#study-open")
    message = page.locator("#study-message")
    message.wait_for()
    assert message.inner_text().startswith("NOT_FOUND")
