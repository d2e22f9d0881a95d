"""The explainer as it is deployed: a real process in front of the real inference process."""

from __future__ import annotations

import time
from typing import Any

import httpx

from shared.kit.schemas import ExplanationOut


def test_process_explains_and_documents_itself(explainer_server: Any, sample_images: dict[str, bytes]) -> None:
    with httpx.Client(base_url=explainer_server.url, timeout=60.0) as client:
        for params, method in (({}, "occlusion"), ({"method": "lime", "num_samples": "100"}, "lime")):
            response = client.post(
                "/v1/explain",
                params={"model": "cnn", **params},
                files={"file": ("scan.jpg", sample_images["glioma"], "image/jpeg")},
            )
            assert response.status_code == 200, response.text
            answer = ExplanationOut.model_validate(response.json())
            assert (answer.model, answer.method) == ("cnn", method)
        assert answer.num_samples == 100
        # Ready once the inference process is: it may still be preloading its default models.
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.status_code == 200
        schema = client.get("/openapi.json").json()
    explain = schema["paths"]["/v1/explain"]["post"]
    assert explain["summary"] and explain["description"]
    assert {"400", "404", "413", "415", "422", "500", "502", "503"} <= set(explain["responses"])
    assert schema["info"]["title"] == "Brain tumour MRI - explainer service"
