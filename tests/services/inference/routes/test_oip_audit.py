"""The Open Inference Protocol's infer routes on inference itself: caller tokens (the protocol's error body) and one
audit record per element, with the tensor's or the file's sha256 (in process, on the test zoo, a real SQLite trail)."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.core.imaging import decode_to_array, to_model_input

TOKEN = "token-of-the-pacs-bridge"


def test_infer_takes_named_callers_and_records_each_element(
    model_zoo: Any, inference_app_client: Callable[..., Any], tmp_path: Path, sample_images: dict[str, bytes]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"pacs-bridge {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    trail = tmp_path / "oip-trail.sqlite"
    # audit_required: the answer waits for its record, so the trail can be read as soon as it is given.
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, api_tokens=tokens,
                                  audit_uri=f"sqlite:///{trail}", audit_required=True)  # fmt: skip
    image = sample_images["meningioma"]
    files = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}]
    }
    refused = client.post("/v2/models/rf/infer", json=files)
    assert refused.status_code == 401 and set(refused.json()) == {"error"}, refused.text
    assert client.post("/v2/models/rf/infer", json=files, headers={"authorization": "Bearer nope"}).status_code == 401

    contract = model_zoo.versions["snn"][0].contract
    tensor = np.concatenate([to_model_input(decode_to_array(image, contract.image_size), contract)] * 2).astype(
        np.float32
    )
    tensors = {"id": "oip-7", "inputs": [{"name": contract.input_name, "shape": list(tensor.shape), "datatype": "FP32",
                                          "data": tensor.ravel().tolist()}]}  # fmt: skip
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert client.post("/v2/models/rf/infer", json=files, headers={**auth, "x-request-id": "r-1"}).status_code == 200
    answered = client.post("/v2/models/snn/infer", json=tensors, headers=auth)
    assert answered.status_code == 200, answered.text

    with sqlite3.connect(trail) as connection:
        rows = connection.execute(
            "SELECT caller, route, request_id, item, model, version, input_sha256 FROM audit_records ORDER BY seq"
        ).fetchall()
    row_sha = hashlib.sha256(tensor[0].tobytes()).hexdigest()
    assert rows == [
        ("pacs-bridge", "/v2/models/{model}/infer", "r-1", "0", "rf", "1", hashlib.sha256(image).hexdigest()),
        ("pacs-bridge", "/v2/models/{model}/infer", "oip-7", "0", "snn", "1", row_sha),
        ("pacs-bridge", "/v2/models/{model}/infer", "oip-7", "1", "snn", "1", row_sha),
    ]
