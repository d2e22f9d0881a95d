"""Schemathesis against each service's own ``/openapi.json``, served by a real process on loopback.

A fixed number of examples per operation and a fixed seed, so a run is reproducible. Every conformance check
runs with no status exceptions: no 5xx, every status answered is declared, every body and content type matches
its declaration, a missing required header is refused, an undeclared method is 405 with ``Allow``. Two of
Schemathesis's checks are left out because they ask something no OpenAPI schema can say:
``positive_data_acceptance`` (a schema-valid upload must be accepted: random bytes are a valid ``binary`` file,
yet not an image, so 415 is right) and ``negative_data_rejection`` (a schema-violating request must be
refused: the text ``null`` in a file field is still a file's bytes).

The training service runs with an API token that Schemathesis is never given: every POST is 401, so fuzzing
never starts a run; its MLflow address is a closed port. The gateway runs with caller tokens on, as compose and
Kubernetes run it, and Schemathesis is given one (so the predictions are fuzzed, and its authentication checks get
their 401s). Inference runs without caller tokens, and its schema then declares neither the scheme nor a 401. The
gateway's DICOMweb routes point at an empty Orthanc.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.orthanc import start_orthanc
from deploy.processes import ManagedProcess, free_port, start_service

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = 10
SEED = 42
LEFT_OUT = "positive_data_acceptance,negative_data_rejection"


CALLER_TOKEN = "schemathesis-caller-token"


@pytest.fixture(scope="module")
def gateway(
    inference_server: ManagedProcess,
    explainer_server: ManagedProcess,
    service_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ManagedProcess]:
    tokens = service_logs / "schemathesis-callers"
    tokens.write_text(f"schemathesis {hashlib.sha256(CALLER_TOKEN.encode()).hexdigest()}\n")
    # An empty PACS behind the DICOMweb routes: a study or report Schemathesis names is then a 404, not a 503.
    pacs = start_orthanc(tmp_path_factory.mktemp("orthanc-schemathesis"), service_logs / "orthanc-schemathesis.log")
    env = {
        "BT_GATEWAY_INFERENCE_URL": inference_server.url,
        "BT_GATEWAY_EXPLAINER_URL": explainer_server.url,
        "BT_GATEWAY_API_TOKENS": str(tokens),
        **pacs.gateway_env(),
    }
    server = start_service("gateway", free_port(), env, service_logs / "gateway-schemathesis.log")
    yield server
    server.stop()
    pacs.stop()


@pytest.fixture(scope="module")
def training(service_logs: Path) -> Iterator[ManagedProcess]:
    env = {
        "BT_TRAINING_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "BT_TRAINING_API_TOKEN": "schemathesis-is-never-given-this-token",
    }
    server = start_service("training", free_port(), env, service_logs / "training-schemathesis.log")
    yield server
    server.stop()


def run_schemathesis(url: str, report: Path, service: str) -> subprocess.CompletedProcess[str]:
    headers = ["--header", f"Authorization: Bearer {CALLER_TOKEN}"] if service == "gateway" else []
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        LEFT_OUT,
        *headers,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=ROOT)


@pytest.mark.parametrize("service", ["gateway", "inference", "explainer", "training"])
def test_every_answer_conforms_to_the_services_schema(
    service: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fixture = {"inference": "inference_server", "explainer": "explainer_server"}.get(service, service)
    server: ManagedProcess = request.getfixturevalue(fixture)
    result = run_schemathesis(server.url, tmp_path / "junit.xml", service)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) > 0, output[-2000:]
    assert "Tested:" in output and "Selected: 0" not in output, output[-2000:]
