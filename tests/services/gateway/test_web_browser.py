"""The web page in a real browser: Debian's Chromium driven by Playwright, against real processes
(MLflow, inference serving the test zoo, the explainer and the gateway).

Chromium is never downloaded: deploy/test.sh installs Debian's package. Without it these tests fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.processes import ManagedProcess, free_port, loopback_url, start_mlflow, start_service
from shared.core.contract import PreprocessingContract
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.kit.schemas import MODEL_FAMILIES
from tests.conftest import register_ensemble, register_onnx_model
from tests.services.gateway.conftest import wait_until_ready

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium stalls on a closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
# Two ensemble versions over the same members, weighed differently: the consensus card names the answering one's.
ENSEMBLE_WEIGHTS = {"1": {"rf": 0.75, "cnn": 0.25}, "2": {"rf": 0.4, "cnn": 0.6}}
SCAN = sorted((SAMPLE_DATA_DIR / "glioma").glob("*.jpg"))[0]


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page of a fresh headless Chromium (new profile under the test's temp folder)."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: install Debian's chromium (deploy/test.sh does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.script_errors = errors  # type: ignore[attr-defined]
        page.requested_urls = requests  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            context.close()


def _open(page: Any, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]", state="attached")


def _upload(page: Any, files: Any, run: int) -> None:
    """Choose a file and wait until every model's card has its answer (the page counts finished files)."""
    page.set_input_files("#file-input", files)
    page.wait_for_selector(f"body[data-finished='{run}']", state="attached")


def _card(page: Any, model: str) -> Any:
    return page.locator(f'.card[data-model="{model}"]')


def _explain(page: Any, model: str, method: str) -> None:
    """Explain the model's answer with ``method`` and wait until its card shows it."""
    card = _card(page, model)
    card.locator(".method-select").select_option(method)
    card.locator(".explain-button").click()
    page.wait_for_selector(f'.card[data-model="{model}"][data-explained="done"][data-method="{method}"]')


def _listed_regions(card: Any) -> tuple[list[str], list[str]]:
    """The region names the card lists for the class and against it."""

    def names(selector: str) -> list[str]:
        return [text.split(":")[0] for text in card.locator(selector).all_inner_texts()]

    return names(".regions li"), names(".opposing-regions li")


def test_page_compares_the_four_models_and_explains_one(
    browser_page: Any, gateway_server: Any, mlflow_server: Any, tmp_path: Path
) -> None:
    page = browser_page
    _open(page, gateway_server.url)
    assert page.get_attribute("#mlflow-link", "href") == mlflow_server.url
    assert page.get_attribute("#docs-link", "href") == "/docs"
    # Version pickers come from GET /v1/models: rf has two versions and the champion alias.
    rf_options = _card(page, "rf").locator(".version-select option").all_inner_texts()
    assert rf_options[0] == "default (v1)"
    assert any(text.startswith("v1 · champion") for text in rf_options)
    assert any(text.startswith("v2") for text in rf_options)
    # The footer says what each card serves, read from the registry (the zoo's versions were trained by tests).
    served = page.locator("#served-models").inner_text()
    assert served.startswith("Served: ") and "rf v1: trained here" in served and "cnn v2: trained here" in served

    _upload(page, str(SCAN), 1)

    compared = httpx.post(
        gateway_server.url + "/v1/compare", files={"file": (SCAN.name, SCAN.read_bytes(), "image/jpeg")}, timeout=60
    ).json()
    expected = {item["model"]: item["result"] for item in compared["results"]}
    for model in MODEL_FAMILIES:
        card = _card(page, model)
        assert card.get_attribute("data-state") == "done"
        assert card.locator(".label").get_attribute("data-label") == expected[model]["label"]
        assert card.locator(".version-served").inner_text() == expected[model]["version"]
        assert card.locator(".bars li").count() == 4
        assert "ms" in card.locator(".latency").inner_text()
        # The prediction set and the referral as the API gave them (cnn v2 has sets; the others predate them).
        members = expected[model]["prediction_set"]
        set_line = card.locator(".prediction-set")
        assert set_line.is_visible() == (members is not None)
        if members:
            assert set_line.inner_text() == "Cannot rule out: " + " · ".join(members)
        elif members == []:
            assert set_line.inner_text() == "No class is sure enough to answer."
        referral = card.locator(".referral")
        assert referral.is_visible() == expected[model]["referral"]
        if expected[model]["referral"]:
            assert referral.inner_text() == f"Refer to a radiologist: {expected[model]['referral_reason']}."
    badge = page.locator("#agreement")
    assert badge.get_attribute("data-state") == ("agree" if compared["agree"] else "disagree")

    cnn = _card(page, "cnn")
    _explain(page, "cnn", "occlusion")
    overlay = cnn.locator(".overlay")
    assert overlay.evaluate("img => img.complete && img.naturalWidth") == 128  # the scan's own size
    caption = cnn.locator(".explanation-caption").inner_text()
    assert caption.startswith("Occlusion for") and "R²" not in caption
    occlusion = _listed_regions(cnn)
    # The same explanation from the API: the page lists its supporting and opposing regions apart.
    answer = httpx.post(
        gateway_server.url + "/v1/explain",
        params={"model": "cnn", "version": expected["cnn"]["version"], "method": "occlusion"},
        files={"file": (SCAN.name, SCAN.read_bytes(), "image/jpeg")},
        timeout=60,
    ).json()
    assert occlusion == (
        [f"region {region['segment']}" for region in answer["regions"]] or ["none"],
        [f"region {region['segment']}" for region in answer["opposing_regions"]] or ["none"],
    )

    _explain(page, "cnn", "lime")
    caption = cnn.locator(".explanation-caption").inner_text()
    assert caption.startswith("LIME for") and "R² " in caption and "seed 0" in caption
    assert cnn.locator(".regions li").count() >= 1
    assert cnn.locator(".opposing-regions li").count() >= 1
    # Opposing regions are drawn in another colour than supporting ones.
    colour = "li => getComputedStyle(li).color"
    assert cnn.locator(".regions li").first.evaluate(colour) != cnn.locator(".opposing-regions li").first.evaluate(
        colour
    )

    page.screenshot(path=str(tmp_path / "compare-and-explain.png"), full_page=True)
    assert (tmp_path / "compare-and-explain.png").stat().st_size > 10_000
    assert page.script_errors == []  # type: ignore[attr-defined]
    # Offline by design: everything the page loads comes from the gateway itself (or is inline).
    foreign = [url for url in page.requested_urls if not url.startswith((gateway_server.url, "data:", "blob:"))]  # type: ignore[attr-defined]
    assert foreign == []


def test_version_picker_changes_the_version_served(browser_page: Any, gateway_server: Any) -> None:
    page = browser_page
    _open(page, gateway_server.url)
    _upload(page, str(SCAN), 1)
    rf = _card(page, "rf")
    assert rf.locator(".version-served").inner_text() == "1"
    rf.locator(".version-select").select_option("2")
    page.wait_for_function(
        "document.querySelector('.card[data-model=rf] .version-served').textContent === '2'"
        " && document.querySelector('.card[data-model=rf]').dataset.state === 'done'"
    )
    # The other cards keep their answers.
    assert _card(page, "cnn").locator(".version-served").inner_text() == "2"


def test_clear_messages_for_a_non_image_and_a_file_too_large(browser_page: Any, gateway_server: Any) -> None:
    page = browser_page
    _open(page, gateway_server.url)
    _upload(page, {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"Jane Doe, not a scan"}, 1)
    message = page.locator("#message")
    assert message.is_visible()
    assert message.inner_text().startswith("Not an image the models can read.")
    assert "Jane" not in message.inner_text()

    huge = {"name": "huge.png", "mimeType": "image/png", "buffer": b"\x89PNG" + b"\0" * (10 * 1024 * 1024 + 1)}
    _upload(page, huge, 2)
    assert message.inner_text().startswith("File too large (at most 10.0 MiB).")
    assert page.locator("#agreement").inner_text() == "No model answered"

    _upload(page, str(SCAN), 3)
    assert not message.is_visible()  # a good file clears the message


def test_models_that_are_down_say_so(browser_page: Any, start_gateway: Any, unused_url: str) -> None:
    gateway = start_gateway(inference_url=unused_url, explainer_url=unused_url)
    page = browser_page
    _open(page, gateway.url)
    assert "list of model versions is unavailable" in page.locator("#message").inner_text()
    _upload(page, str(SCAN), 1)
    for model in MODEL_FAMILIES:
        card = _card(page, model)
        assert card.get_attribute("data-state") == "error"
        status = card.locator(".card-status").inner_text()
        assert status.startswith("Model unavailable right now.")
        assert "inference service is unavailable" in status
    assert page.locator("#agreement").inner_text() == "No model answered"


@pytest.fixture(scope="module")
def ensemble_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    make_onnx: Callable[..., tuple[bytes, Any]],
    service_logs: Path,
) -> Iterator[ManagedProcess]:
    """A gateway in front of an inference process whose registry (its own MLflow) holds two members and
    ``ENSEMBLE_WEIGHTS``' two ensemble versions."""
    from shared.core.ensemble_spec import EnsembleSpec

    state = tmp_path_factory.mktemp("page-ensemble")
    mlflow = start_mlflow(state / "store", free_port(), state / "mlflow.log")
    contract = PreprocessingContract(layout="flat", scaling="unit", image_size=32)
    members = {model: register_onnx_model(mlflow.url, model, make_onnx(contract)[0])[0] for model in ("rf", "cnn")}
    for weights in ENSEMBLE_WEIGHTS.values():
        register_ensemble(mlflow.url, EnsembleSpec(members, weights))
    audit = f"sqlite:///{state / 'audit.sqlite'}"
    inference = start_service(
        "inference",
        free_port(),
        {
            "MLFLOW_TRACKING_URI": mlflow.url,
            "BT_INFERENCE_TRACKING_URI": mlflow.url,
            "BT_INFERENCE_CACHE_DIR": str(state / "cache"),
            "BT_INFERENCE_AUDIT_URI": audit,
        },
        service_logs / "page-ensemble-inference.log",
    )
    gateway = start_service(
        "gateway",
        free_port(),
        {
            "BT_GATEWAY_INFERENCE_URL": inference.url,
            "BT_GATEWAY_EXPLAINER_URL": loopback_url(free_port()),  # not asked here
            "BT_GATEWAY_AUDIT_URI": audit,
            "BT_GATEWAY_WORKERS": "1",
        },
        service_logs / "page-ensemble-gateway.log",
        as_module=True,
    )
    try:
        wait_until_ready(inference.url)
        yield gateway
    finally:
        for process in (gateway, inference, mlflow):
            process.stop()


def _weighed(card: Any) -> set[str]:
    """The members and weights the card names ("weighted mean of rf v1 ×0.75, cnn v1 ×0.25")."""
    text = card.locator(".members").inner_text()
    assert text.startswith("weighted mean of ")
    return set(text.removeprefix("weighted mean of ").split(", "))


def _weights_of(version: str) -> set[str]:
    return {f"{model} v1 ×{weight:.2f}" for model, weight in ENSEMBLE_WEIGHTS[version].items()}


def test_consensus_card_names_the_weights_of_the_version_that_answered(
    browser_page: Any, ensemble_gateway: ManagedProcess
) -> None:
    page = browser_page
    _open(page, ensemble_gateway.url)
    consensus = _card(page, "ensemble")
    assert page.locator("#consensus").is_visible()
    _upload(page, str(SCAN), 1)
    served = consensus.locator(".version-served").inner_text()
    assert _weighed(consensus) == _weights_of(served)
    other = "1" if served == "2" else "2"
    consensus.locator(".version-select").select_option(other)
    page.wait_for_function(
        f"document.querySelector('.card[data-model=ensemble] .version-served').textContent === '{other}'"
        " && document.querySelector('.card[data-model=ensemble]').dataset.state === 'done'"
    )
    assert _weighed(consensus) == _weights_of(other)
    assert page.script_errors == []  # type: ignore[attr-defined]
