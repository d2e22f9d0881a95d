"""The gateway relays the inference service's guard unchanged: a refused image is the same 422 NOT_A_BRAIN_MRI
(code, message and verdict) on /v1/predict, /v1/compare and /v1/explain, a refused file of a batch keeps its own
entry, flag mode answers carry the flag, every such route declares the 422 in its OpenAPI schema, and the web page
says "not a brain MRI slice" instead of a generic error.

Real inference processes (refuse, flag) on their own MLflow holding a guard (shared with the inference service's
tests/services/inference/test_ood_routes.py); in-process gateways in front of them, and a gateway process for the
browser.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.processes import ManagedProcess, free_port, start_service
from tests.services.gateway import test_web_browser as web
from tests.services.inference.test_ood_routes import GUARDED_MODELS, guarded_services, photo_like

# The web page's browser (Debian's Chromium through Playwright), as the gateway's browser tests drive it.
browser_page = web.browser_page
# A model loading on a busy CI machine must not become UPSTREAM_TIMEOUT here (timeouts are tested elsewhere).
PREDICT_TIMEOUT_S = "30"


@pytest.fixture(scope="module")
def inference_by_mode(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sample_arrays: Any
) -> dict[str, str]:
    """A real inference process per guard mode on the guarded MLflow: ``{"refuse": url, "flag": url, ...}``."""
    return guarded_services(request.config, tmp_path_factory, sample_arrays, "refuse", "flag")


@pytest.fixture
def gateway_for(inference_by_mode: dict[str, str], gateway_app_client: Callable[..., Any]) -> Callable[[str], Any]:
    """``gateway_for(mode)``: an in-process gateway in front of the inference process in that mode."""
    return lambda mode: gateway_app_client(inference_url=inference_by_mode[mode], predict_timeout_s=PREDICT_TIMEOUT_S)


def _file(data: bytes) -> tuple[str, bytes, str]:
    return ("image.png", data, "image/png")


def _error(response: httpx.Response) -> dict[str, Any]:
    """The error body without its request id (each call has its own)."""
    return {key: value for key, value in response.json()["error"].items() if key != "request_id"}


def test_refusal_is_relayed_unchanged(inference_by_mode: dict[str, str], gateway_for: Callable[[str], Any]) -> None:
    gateway = gateway_for("refuse")
    image = photo_like()
    with httpx.Client(base_url=inference_by_mode["refuse"], timeout=60, trust_env=False) as inference:
        direct_predict = inference.post("/v1/models/rf/predict", files={"file": _file(image)})
        direct_compare = inference.post(
            "/v1/compare", params=[("models", m) for m in GUARDED_MODELS], files={"file": _file(image)}
        )
    relayed_predict = gateway.post("/v1/predict", params={"model": "rf"}, files={"file": _file(image)})
    relayed_compare = gateway.post(
        "/v1/compare", params={"models": ",".join(GUARDED_MODELS)}, files={"file": _file(image)}
    )
    for direct, relayed in ((direct_predict, relayed_predict), (direct_compare, relayed_compare)):
        assert direct.status_code == relayed.status_code == 422, relayed.text
        assert _error(relayed)["code"] == "NOT_A_BRAIN_MRI"
        assert _error(relayed) == _error(direct)  # message and details.ood as inference said them
        assert _error(relayed)["details"]["ood"]["flag"] is True


def test_batch_keeps_a_refused_file_as_its_own_entry(gateway_for: Callable[[str], Any], sample_images: dict) -> None:
    files = [("files", _file(sample_images["glioma"])), ("files", _file(photo_like()))]
    response = gateway_for("refuse").post("/v1/predict/batch", params={"model": "rf"}, files=files)
    assert response.status_code == 200, response.text
    answered, refused = response.json()["results"]
    assert answered["ok"] is True and answered["result"]["ood"]["flag"] is False
    assert refused["index"] == 1 and refused["ok"] is False
    assert refused["error"]["code"] == "NOT_A_BRAIN_MRI" and refused["error"]["status"] == 422


def test_flag_mode_answers_are_relayed_with_the_flag(gateway_for: Callable[[str], Any], sample_images: dict) -> None:
    gateway = gateway_for("flag")
    predicted = gateway.post("/v1/predict", params={"model": "rf"}, files={"file": _file(photo_like())})
    assert predicted.status_code == 200, predicted.text
    verdict = predicted.json()["ood"]
    assert verdict["flag"] is True and verdict["score"] > verdict["threshold"]

    compared = gateway.post(
        "/v1/compare", params={"models": ",".join(GUARDED_MODELS)}, files={"file": _file(photo_like())}
    )
    assert compared.status_code == 200, compared.text
    assert [item["result"]["ood"] for item in compared.json()["results"]] == [verdict] * len(GUARDED_MODELS)

    slice_answer = gateway.post("/v1/predict", params={"model": "rf"}, files={"file": _file(sample_images["notumor"])})
    assert slice_answer.status_code == 200 and slice_answer.json()["ood"]["flag"] is False


def test_explain_relays_the_refusal(
    inference_by_mode: dict[str, str], gateway_app_client: Callable[..., Any], tmp_path: Path
) -> None:
    """/v1/explain through a real explainer: the guard's 422 as inference said it; a refused image is never
    explained."""
    env = {"BT_EXPLAINER_INFERENCE_URL": inference_by_mode["refuse"]}
    explainer = start_service("explainer", free_port(), env, tmp_path / "explainer.log")
    try:
        gateway = gateway_app_client(inference_url=inference_by_mode["refuse"], explainer_url=explainer.url)
        relayed = gateway.post(
            "/v1/explain", params={"model": "rf", "num_samples": 60}, files={"file": _file(photo_like())}
        )
    finally:
        explainer.stop()
    with httpx.Client(base_url=inference_by_mode["refuse"], timeout=60, trust_env=False) as inference:
        direct = inference.post("/v1/ood", files={"file": _file(photo_like())})
    assert relayed.status_code == direct.status_code == 422, relayed.text
    assert _error(relayed) == _error(direct)


def test_openapi_declares_not_a_brain_mri(gateway_for: Callable[[str], Any]) -> None:
    paths = gateway_for("refuse").get("/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/compare", "/v1/explain"):
        assert "NOT_A_BRAIN_MRI" in paths[path]["post"]["responses"]["422"]["description"], path


def test_page_says_the_image_is_not_a_brain_mri(
    browser_page: Any, start_gateway: Callable[..., ManagedProcess], inference_by_mode: dict[str, str], tmp_path: Path
) -> None:
    """Refused: one clear message, no class; flagged: the classes shown with a warning on the page and the card."""
    photo = tmp_path / "holiday.png"
    photo.write_bytes(photo_like())
    refusing = start_gateway(inference_url=inference_by_mode["refuse"], predict_timeout_s=PREDICT_TIMEOUT_S)
    web._open(browser_page, refusing.url)
    web._upload(browser_page, str(photo), 1)
    message = browser_page.locator("#message")
    assert message.is_visible()
    assert message.inner_text().startswith("Not a brain MRI slice: no tumour class is given for this image.")
    assert "Refused: not a brain MRI slice" in browser_page.locator("#agreement").inner_text()
    card = web._card(browser_page, "rf")
    assert "Not a brain MRI slice" in card.locator(".card-status").inner_text()
    assert not card.locator(".result").is_visible()

    flagging = start_gateway(inference_url=inference_by_mode["flag"], predict_timeout_s=PREDICT_TIMEOUT_S)
    web._open(browser_page, flagging.url)
    web._upload(browser_page, str(photo), 1)
    assert "does not look like a brain MRI slice" in browser_page.locator("#message").inner_text()
    card = web._card(browser_page, "rf")
    assert card.locator(".label").inner_text()  # the class is shown...
    warning = card.locator(".ood-warning")  # ...with the guard's warning
    assert warning.is_visible() and "this class is not reliable" in warning.inner_text()
    assert browser_page.script_errors == []
