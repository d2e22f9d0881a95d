"""End to end: the README's stack command on free loopback ports, real processes throughout.

`python -m deploy.stack up` starts MLflow, registers the repository's pretrained bundle into the empty registry
(the four champions, the ensemble and the guard against non-MRI input), starts inference, explainer, training and
gateway; then the public API is used over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from deploy.bundle import load_manifest
from deploy.nginx import front_unavailable
from deploy.processes import free_port
from deploy.stack import DEFAULT_PORTS
from shared.core.contract import CLASS_NAMES
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.core.explanation.occlusion import sliding_patches
from shared.core.imaging import decode_grayscale, resize_gray

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("rf", "snn", "cnn", "mobilenetv2")


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory, mobilenetv2_weights: Path) -> dict[str, str]:
    """The environment of the stack commands: free ports for every process and a fresh state folder."""
    ports = {name: free_port() for name in DEFAULT_PORTS}
    return {
        **os.environ,
        **{f"BT_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "BT_STATE_DIR": str(tmp_path_factory.mktemp("stack")),
        "BT_MOBILENETV2_WEIGHTS": str(mobilenetv2_weights),
    }


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    env = stack_env
    state = Path(env["BT_STATE_DIR"])
    ports = {name: int(env[f"BT_{name.upper()}_PORT"]) for name in DEFAULT_PORTS}
    up = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    try:
        assert up.returncode == 0, f"stack up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        assert "The stack is up" in up.stdout
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        subprocess.run([sys.executable, "-m", "deploy.stack", "down"], cwd=ROOT, env=env, timeout=60)
        processes = json.loads((state / "stack.json").read_text()) if (state / "stack.json").exists() else {}
        assert not processes, "stack.json is removed by down"


def test_status_reports_every_process_up(stack: dict[str, str], stack_env: dict[str, str]) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "deploy.stack", "status"], cwd=ROOT, env=stack_env, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout
    lines = status.stdout.splitlines()
    # nginx, when installed, holds the public ports in front of the services (deploy/nginx.py).
    expected = [*stack, *(["nginx"] if front_unavailable() is None else [])]
    assert sorted(line.split()[0] for line in lines) == sorted(expected)
    assert all(line.split()[1] == "up" for line in lines), status.stdout


def test_services_with_upstreams_are_ready(stack: dict[str, str]) -> None:
    # Ready means the same everywhere: what the service needs to answer is reachable and ready.
    for name in ("inference", "explainer", "gateway"):
        deadline = time.monotonic() + 60
        response = httpx.get(f"{stack[name]}/readyz", timeout=10)
        while response.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            response = httpx.get(f"{stack[name]}/readyz", timeout=10)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["status"] == "ready", (name, response.text)


def sample_file(class_name: str) -> Path:
    return sorted((SAMPLE_DATA_DIR / class_name).glob("*.jpg"))[0]


def test_predict_answers_for_every_family(stack: dict[str, str]) -> None:
    path = sample_file("glioma")
    for family in FAMILIES:
        response = httpx.post(
            f"{stack['gateway']}/v1/predict",
            params={"model": family},
            files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == family and body["version"] == "1"
        assert set(body["probabilities"]) == set(CLASS_NAMES)
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-3
        assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
        assert body["latency_ms"] > 0


def test_models_are_the_pretrained_bundle(stack: dict[str, str]) -> None:
    manifest = load_manifest()  # the bundle committed in the repository: no bundle, no pretrained models
    body = httpx.get(f"{stack['gateway']}/v1/models", timeout=30).json()
    listed = {model["model"]: model for model in body["models"]}
    assert set(FAMILIES) <= set(listed)
    for bundled in manifest.models:
        version = listed[bundled.model]["versions"][0]
        assert listed[bundled.model]["default_version"] == version["version"] == "1"
        assert version["pretrained_on"] == manifest.label()
        assert version["metrics"]["test_accuracy"] == pytest.approx(bundled.test_metrics["test_accuracy"])


def test_ensemble_answers_with_its_pinned_members(stack: dict[str, str]) -> None:
    manifest = load_manifest()
    assert manifest.ensemble is not None
    path = sample_file("glioma")
    response = httpx.post(
        f"{stack['gateway']}/v1/predict", params={"model": "ensemble"}, files={"file": (path.name, path.read_bytes())},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    # The members it weighs (a member weighing 0 is not run), each at the version the bundle registered.
    weighed = [family for family, weight in manifest.ensemble.weights.items() if weight > 0]
    assert response.json()["members"] == dict.fromkeys(weighed, "1")


def test_the_guard_refuses_a_page_of_text(stack: dict[str, str]) -> None:
    page = Image.new("L", (512, 512), 255)
    draw = ImageDraw.Draw(page)
    for row in range(0, 512, 16):
        draw.text((8, row), "Discharge summary: patient seen in clinic, follow-up in six weeks.", fill=0)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    response = httpx.post(
        f"{stack['gateway']}/v1/predict", params={"model": "cnn"}, files={"file": ("page.png", buffer.getvalue())},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "NOT_A_BRAIN_MRI"


def test_compare_answers_for_all_four(stack: dict[str, str]) -> None:
    path = sample_file("pituitary")
    response = httpx.post(
        f"{stack['gateway']}/v1/compare", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["model"] for item in body["results"]] == list(FAMILIES)
    assert all(item["ok"] for item in body["results"])
    assert body["agree"] == (len(set(body["labels"].values())) == 1)


def test_explain_answers_for_every_family(stack: dict[str, str]) -> None:
    path = sample_file("meningioma")
    for family in FAMILIES:
        response = httpx.post(
            f"{stack['gateway']}/v1/explain",
            params={"model": family},
            files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["version"], body["method"], body["seed"]) == (family, "1", "occlusion", None)
        assert body["label"] == body["predicted_label"] in CLASS_NAMES
        # Occlusion: one copy per position of the patch, drawn at the model's size, and the upload itself.
        contract = httpx.get(f"{stack['inference']}/v1/models/{family}/contract", timeout=30).json()["contract"]
        patches = sliding_patches(resize_gray(decode_grayscale(path.read_bytes()), contract["image_size"]))
        assert (body["num_segments"], body["num_samples"]) == (patches.labels.max(), len(patches.hidden) + 1)
        # Regions for and against apart.
        assert 1 <= len(body["regions"]) <= 5 and all(region["weight"] > 0 for region in body["regions"])
        assert all(region["weight"] < 0 for region in body["opposing_regions"])
        overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == Image.open(path).size


def test_bad_upload_is_a_clear_4xx(stack: dict[str, str]) -> None:
    response = httpx.post(
        f"{stack['gateway']}/v1/predict",
        params={"model": "cnn"},
        files={"file": ("notes.txt", b"definitely not an MRI", "text/plain")},
        timeout=30,
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "INVALID_IMAGE"
    assert "definitely" not in response.text


def test_training_run_over_http_registers_a_new_version(stack: dict[str, str], stack_env: dict[str, str]) -> None:
    url, options = f"{stack['training']}/v1/training-runs", {"families": ["rf"], "image_size": 64}
    assert httpx.post(url, json=options, timeout=30).status_code == 401  # anonymous callers change nothing
    # The token the stack generated on its first start, kept in its state folder.
    token = (Path(stack_env["BT_STATE_DIR"]) / "secrets" / "api-token").read_text().strip()
    start = httpx.post(url, json=options, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert start.status_code == 202, start.text
    run_id = start.json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        run = httpx.get(f"{stack['training']}/v1/training-runs/{run_id}", timeout=30).json()
        if run["state"] not in ("queued", "running"):
            break
        time.sleep(1)
    assert run["state"] == "succeeded", run
    assert run["families"]["rf"]["registered_version"] == "2"
    path = sample_file("notumor")
    response = httpx.post(
        f"{stack['gateway']}/v1/predict",
        params={"model": "rf", "version": "2"},
        files={"file": (path.name, path.read_bytes(), "image/jpeg")},
        timeout=60,
    )
    assert response.status_code == 200 and response.json()["version"] == "2"
    # The run logged LIME overlays of its test split, as every training run does.
    from mlflow import MlflowClient

    client = MlflowClient(stack["mlflow"], registry_uri=stack["mlflow"])
    run_id = client.get_model_version("brain-tumor-rf", "2").run_id
    names = [Path(item.path).name for item in client.list_artifacts(run_id, "explanations")]
    assert "summary.json" in names, names
    assert len([name for name in names if name.endswith(".png")]) >= 4, names  # two per class the split has


def test_every_answer_is_in_one_verifiable_trail(stack: dict[str, str], stack_env: dict[str, str]) -> None:
    """The stack's gateway and inference write one audit trail in its state folder; the ensemble's record names its
    members, the guard's verdict and the version, and ``bt-audit verify`` finds the chain intact."""
    path = sample_file("meningioma")
    answer = httpx.post(
        f"{stack['gateway']}/v1/predict", params={"model": "ensemble"}, headers={"x-request-id": "e2e-audit"},
        files={"file": (path.name, path.read_bytes())}, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    trail = Path(stack_env["BT_STATE_DIR"]) / "audit" / "trail.sqlite"
    deadline = time.monotonic() + 15
    row = None
    while row is None:
        assert time.monotonic() < deadline, "the answer was not recorded"
        time.sleep(0.3)
        if trail.exists():
            with sqlite3.connect(trail) as connection:
                row = connection.execute(
                    "SELECT model, version, members, label, guard, input_sha256 FROM audit_records "
                    "WHERE request_id = 'e2e-audit'"
                ).fetchone()
    body = answer.json()
    model, version, members, label, guard, digest = row
    assert (model, version, label) == ("ensemble", body["version"], body["label"])
    assert json.loads(members) == body["members"]
    assert json.loads(guard)["guard_version"] == body["ood"]["guard_version"]
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    explained = httpx.post(
        f"{stack['gateway']}/v1/explain", params={"model": "ensemble", "num_samples": 50},
        headers={"x-request-id": "e2e-audit-explain"}, files={"file": (path.name, path.read_bytes())}, timeout=300,
    )  # fmt: skip
    assert explained.status_code == 200, explained.text
    deadline = time.monotonic() + 15
    while True:
        with sqlite3.connect(trail) as connection:
            found = connection.execute(
                "SELECT version, members FROM audit_records WHERE request_id = 'e2e-audit-explain'"
            ).fetchone()
        if found is not None:
            break
        assert time.monotonic() < deadline, "the explanation was not recorded"
        time.sleep(0.3)
    # The explainer's answer has no members: the record takes them from the catalogue's pinned version.
    assert (found[0], json.loads(found[1])) == (body["version"], body["members"])
    verified = subprocess.run(
        [sys.executable, "-m", "shared.kit.audit", "--uri", f"sqlite:///{trail}", "verify"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and verified.stdout.startswith("OK: "), verified.stdout
