"""A real PACS and a real stack for the DICOMweb tests: Debian's Orthanc with its DICOMweb plugin (deploy/orthanc.py)
holding the study of tests/dicom_study.py, and the gateway (``python -m services.gateway``) in front of an inference
process serving the repository's pretrained bundle (the four models, the ensemble and the guard, registered into a
fresh MLflow exactly as ``python -m deploy.stack up`` registers them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy import pretrained
from deploy.orthanc import Orthanc, start_orthanc
from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from tests.conftest import TEST_MLFLOW_CREDENTIALS
from tests.dicom_study import Study, make_study, stow_body
from tests.services.gateway.conftest import wait_until_ready


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), service_logs / "orthanc.log")
    yield server
    server.stop()


def stow(orthanc: Orthanc, files: list[bytes]) -> None:
    """Store files in Orthanc over STOW-RS, as a modality or another PACS would."""
    body, content_type = stow_body(files)
    answer = httpx.post(
        f"{orthanc.dicomweb_url}/studies", content=body, headers={"content-type": content_type},
        auth=orthanc.user.httpx_auth(), timeout=60, trust_env=False,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="session")
def pacs_study(orthanc: Orthanc) -> Study:
    """The study, stored in Orthanc."""
    study = make_study()
    stow(orthanc, list(study.files.values()))
    return study


@pytest.fixture(scope="session")
def bundle_inference(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[ManagedProcess]:
    """Inference serving the pretrained bundle from a fresh MLflow, the guard refusing (its default mode)."""
    mlflow = start_mlflow(
        tmp_path_factory.mktemp("mlflow-bundle"), free_port(), service_logs / "mlflow-bundle.log",
        credentials=TEST_MLFLOW_CREDENTIALS,
    )  # fmt: skip
    try:
        pretrained.register(mlflow.url)
        env = {
            "MLFLOW_TRACKING_URI": mlflow.url,
            "BT_INFERENCE_TRACKING_URI": mlflow.url,
            "BT_INFERENCE_CACHE_DIR": str(tmp_path_factory.mktemp("inference-cache-bundle")),
            "BT_INFERENCE_WORKERS": "1",
        }
        server = start_service("inference", free_port(), env, service_logs / "inference-bundle.log", timeout=180)
        try:
            wait_until_ready(server.url, timeout_s=300)
            yield server
        finally:
            server.stop()
    finally:
        mlflow.stop()


def start_gateway(inference: ManagedProcess, log_path: Path, **settings: str) -> ManagedProcess:
    env = {
        "BT_GATEWAY_INFERENCE_URL": inference.url,
        "BT_GATEWAY_WORKERS": "1",
        # A busy 2-core machine must not turn a slow answer into UPSTREAM_TIMEOUT here (timeouts are tested elsewhere).
        "BT_GATEWAY_PREDICT_TIMEOUT_S": "60",
        **{f"BT_GATEWAY_{key.upper()}": value for key, value in settings.items()},
    }
    return start_service("gateway", free_port(), env, log_path, as_module=True)


@pytest.fixture(scope="session")
def pacs_gateway(bundle_inference: ManagedProcess, orthanc: Orthanc, service_logs: Path) -> Iterator[ManagedProcess]:
    """The gateway wired to Orthanc (URL and generated user in its settings)."""
    settings = {key.removeprefix("BT_GATEWAY_").lower(): value for key, value in orthanc.gateway_env().items()}
    server = start_gateway(bundle_inference, service_logs / "gateway-pacs.log", **settings)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(pacs_gateway: ManagedProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pacs_gateway.url, timeout=300.0, trust_env=False) as http:
        yield http
