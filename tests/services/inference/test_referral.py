"""Prediction sets and referral on every answer: the rule in isolation, then through the real inference process
(/v1 predict-batch, compare, and the Open Inference Protocol's parameters) with the test zoo, whose cnn version 2
carries conformal thresholds and whose other versions were registered before them."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest

from services.inference.referral import referral_of
from shared.core.conformal import ConformalSets
from shared.core.dataset import SAMPLE_DATA_DIR, discover
from shared.kit.schemas import OodOut

NAMES = ("notumor", "pituitary", "meningioma", "glioma")
SETS = ConformalSets(calibration_images=100, thresholds={"0.05": 0.7, "0.1": 0.2})


def _ood(score: float, unusual: bool) -> OodOut:
    return OodOut(score=score, threshold=9.0, flag=False, flag_threshold=5.0, unusual=unusual, guard_version="1")


def test_an_answer_is_referred_when_its_set_holds_two_classes_or_the_guard_finds_the_image_unusual() -> None:
    sure, unsure = np.array([0.9, 0.05, 0.03, 0.02]), np.array([0.05, 0.05, 0.5, 0.4])
    plain = referral_of(sure, NAMES, SETS, 0.05, _ood(1.0, unusual=False))
    assert (plain.prediction_set, plain.refer, plain.reason) == (["notumor"], False, None)
    torn = referral_of(unsure, NAMES, SETS, 0.05, None)
    assert torn.prediction_set == ["meningioma", "glioma"] and torn.refer
    assert torn.reason == "the model cannot tell meningioma and glioma apart at 95% confidence"
    odd = referral_of(sure, NAMES, SETS, 0.05, _ood(6.2, unusual=True))
    assert odd.refer and odd.reason == "the image is unusual for a brain MRI slice (guard score 6.20)"
    declared = _ood(1.0, unusual=True).model_copy(update={"flag": True, "declared_modality": "CT"})
    header = referral_of(sure, NAMES, SETS, 0.05, declared)  # flag mode answers it: the header is the reason
    assert header.refer and header.reason == "the DICOM file declares modality CT, not MR"
    vague = referral_of(unsure, NAMES, SETS, 0.1, None)  # a wider alpha: only p >= 0.8 counts, and none has it
    assert (vague.prediction_set, vague.refer) == ([], True)
    assert vague.reason == "the model is not sure of any class at 90% confidence"
    older = referral_of(unsure, NAMES, None, 0.05, None)  # a version registered before prediction sets
    assert (older.prediction_set, older.refer) == (None, False)


@pytest.fixture(scope="module")
def http(inference_server: Any) -> Any:
    with httpx.Client(base_url=inference_server.url, trust_env=False, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sample_files() -> list[bytes]:
    return [path.read_bytes() for path in discover(SAMPLE_DATA_DIR).train.paths[::4]]


def _assert_consistent(result: dict[str, Any]) -> None:
    members = result["prediction_set"]
    assert set(members) <= set(NAMES) and len(set(members)) == len(members)
    assert not members or members[0] == result["label"]
    unusual = bool(result["ood"] and (result["ood"]["unusual"] or result["ood"]["flag"]))
    assert result["referral"] == (len(members) != 1 or unusual)
    assert (result["referral_reason"] is not None) == result["referral"]
    if len(members) > 1:
        assert " and ".join([", ".join(members[:-1]), members[-1]]) in result["referral_reason"]


def test_every_answer_of_a_model_with_sets_carries_them_and_refers_the_unsure(
    http: httpx.Client, sample_files: list[bytes]
) -> None:
    files = [("files", (f"s{i}.jpg", data)) for i, data in enumerate(sample_files)]
    response = http.post("/v1/models/cnn/predict-batch", files=files)
    assert response.status_code == 200, response.text
    results = [item["result"] for item in response.json()["results"]]
    assert all(item is not None for item in results)
    for result in results:
        assert result["version"] == "2"
        _assert_consistent(result)
    referred = [r["referral"] for r in results]
    assert any(referred) and not all(referred)  # a weak model is unsure of some sample slices, not of all

    compared = http.post("/v1/compare", params={"models": ["cnn", "rf"]}, files={"file": ("s.jpg", sample_files[0])})
    assert compared.status_code == 200, compared.text
    by_model = {item["model"]: item["result"] for item in compared.json()["results"]}
    _assert_consistent(by_model["cnn"])
    assert by_model["cnn"]["prediction_set"] == results[0]["prediction_set"]
    assert by_model["rf"]["prediction_set"] is None  # registered before prediction sets


def test_the_open_inference_protocol_gives_each_elements_set_and_referral(
    http: httpx.Client, sample_files: list[bytes]
) -> None:
    images = sample_files[:6]
    body = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [base64.b64encode(data).decode() for data in images]}]}  # fmt: skip
    response = http.post("/v2/models/cnn/infer", json=body)
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    expected = [http.post("/v1/models/cnn/predict", files={"file": ("s.jpg", data)}).json() for data in images]
    assert parameters["prediction_set"].split(",") == ["|".join(e["prediction_set"]) for e in expected]
    assert parameters["referral"].split(",") == ["true" if e["referral"] else "false" for e in expected]
