"""Inference under MLflow and cache faults, with real processes: an MLflow server of this module's own (never
the session's) that the tests hang (SIGSTOP), kill (SIGKILL) and start again, and inference services started
as the stack starts them.

- MLflow hung: predictions keep answering from the cache; the requests that reach MLflow are bounded by the
  breaker's interval, none waits for the MLflow timeout; ``/readyz`` says "unreachable since"; MLflow back:
  the catalogue refreshes (a moved alias is served).
- MLflow killed: predictions keep answering; an inference restarted while MLflow is down serves the kept
  catalogue and its verified files; a truncated and a swapped cache file are never served (a clear 503 and
  ``/readyz`` 503 while MLflow is down; the registered file again once it is back).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from services.inference import model_store
from services.inference.cache_trust import cache_signer
from shared.core.contract import CLASS_NAMES, ONNX_FILENAME, PreprocessingContract
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.schemas import CHAMPION_ALIAS, registered_name
from tests.conftest import register_onnx_model
from tests.prometheus_samples import parse, value

# Short enough for a test, long enough that a request waiting for it would stand out from ~100 ms answers.
MLFLOW_TIMEOUT_S = 5.0
REGISTRY_RETRY_S = 1.0
REGISTRY_CALLS = "bt_inference_registry_calls_total"

# The figures of each fault (answers, slowest, calls to MLflow) go to the log, for docs/reliability.md.
logger = logging.getLogger(__name__)


class FaultMlflow:
    """A real MLflow server that a test can hang, kill and start again on the same port and data."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir, self.log_path, self.port = data_dir, log_path, free_port()
        self.server: ManagedProcess = start_mlflow(data_dir, self.port, log_path)
        self.url = self.server.url

    def _signal(self, signum: int) -> None:
        os.killpg(self.server.process.pid, signum)

    def hang(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.server.process.wait(timeout=10)

    def running(self) -> bool:
        return self.server.process.poll() is None

    def start_again(self) -> None:
        self.server = start_mlflow(self.data_dir, self.port, self.log_path)

    def stop(self) -> None:
        if self.running():
            self.resume()
        self.server.stop()


@dataclass
class FaultZoo:
    """What this module registered: name -> version -> ONNX bytes."""

    files: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def expected(self, model: str, version: str, image: bytes) -> np.ndarray:
        """What the registered file itself says for an image (real onnxruntime, in this process)."""
        classifier = OnnxClassifier(model, version, self.files[model][version])
        classifier.load()
        result = classifier.classify(image)
        return np.array([result.probabilities[label] for label in CLASS_NAMES])


@pytest.fixture(scope="module")
def fault_mlflow(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[FaultMlflow]:
    server = FaultMlflow(tmp_path_factory.mktemp("fault-mlflow"), service_logs / "fault-mlflow.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_zoo(fault_mlflow: FaultMlflow, make_onnx: Any) -> FaultZoo:
    """snn version 1; cnn versions 1 and 2 (default: the latest, 2). Different estimators and layouts, so a
    file served under the wrong name gives other probabilities."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    zoo = FaultZoo()
    flat16 = PreprocessingContract(layout="flat", scaling="unit", image_size=16)
    nhwc16 = PreprocessingContract(layout="nhwc", scaling="unit", image_size=16)
    plan = [
        ("snn", flat16, LogisticRegression(max_iter=200)),
        ("cnn", nhwc16, LogisticRegression(max_iter=200, C=0.05)),
        ("cnn", nhwc16, RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0)),
    ]
    for model, contract, estimator in plan:
        onnx_bytes, _ = make_onnx(contract, estimator)
        version, _ = register_onnx_model(fault_mlflow.url, model, onnx_bytes, experiment="faults")
        zoo.files.setdefault(model, {})[version] = onnx_bytes
    return zoo


def _start_inference(fault_mlflow: FaultMlflow, cache_dir: Path, service_logs: Path) -> ManagedProcess:
    env = {
        "BT_INFERENCE_TRACKING_URI": fault_mlflow.url,
        "BT_INFERENCE_CACHE_DIR": str(cache_dir),
        "BT_INFERENCE_MLFLOW_TIMEOUT_S": str(MLFLOW_TIMEOUT_S),
        "BT_INFERENCE_REGISTRY_RETRY_S": str(REGISTRY_RETRY_S),
        "BT_INFERENCE_CATALOG_TTL_S": "0.5",
    }
    return start_service("inference", free_port(), env, service_logs / "fault-inference.log")


def _readyz(server: ManagedProcess, until: Any, timeout_s: float = 60.0) -> httpx.Response:
    """Poll /readyz until ``until(response)`` holds; the last answer either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{server.url}/readyz", timeout=30, trust_env=False)
        if until(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def _ready(response: httpx.Response) -> bool:
    return response.status_code == 200


def _predict(server: ManagedProcess, model: str, image: bytes, version: str | None = None) -> httpx.Response:
    params = {"version": version} if version else {}
    return httpx.post(
        f"{server.url}/v1/models/{model}/predict",
        params=params,
        files={"file": ("scan.jpg", image, "image/jpeg")},
        timeout=30,
        trust_env=False,
    )


def _probabilities(response: httpx.Response) -> np.ndarray:
    return np.array([response.json()["probabilities"][label] for label in CLASS_NAMES])


def _registry_calls(server: ManagedProcess) -> float:
    samples = parse(httpx.get(f"{server.url}/metrics", timeout=30, trust_env=False).text)
    return value(samples, REGISTRY_CALLS, outcome="ok") + value(samples, REGISTRY_CALLS, outcome="failed")


def _when_mlflow_answers(call: Callable[[], object], timeout_s: float = 120.0) -> None:
    """Make the test's own MLflow call, again while the resumed server resets or refuses connections."""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call()
            return
        except MlflowException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _cache_file(cache_dir: Path, model: str, version: str) -> Path:
    return next((cache_dir / registered_name(model)).glob(f"v{version}-*/{ONNX_FILENAME}"))


def test_a_hung_mlflow_never_holds_a_prediction_and_its_return_refreshes_the_catalogue(
    fault_mlflow: FaultMlflow, fault_zoo: FaultZoo, tmp_path: Path, service_logs: Path, sample_images: dict
) -> None:
    from mlflow import MlflowClient

    image = sample_images["glioma"]
    server = _start_inference(fault_mlflow, tmp_path / "cache", service_logs)
    try:
        assert _readyz(server, _ready).json()["registry"] == "reachable"
        calls_before = _registry_calls(server)
        hung_at = time.monotonic()
        fault_mlflow.hang()
        try:
            answers: list[tuple[int, str, float]] = []
            ready = None
            # Long enough for the background refresh to time out and the breaker to open, and then some.
            while time.monotonic() - hung_at < MLFLOW_TIMEOUT_S + 3 * REGISTRY_RETRY_S or len(answers) < 20:
                for model in ("snn", "cnn"):
                    started = time.monotonic()
                    response = _predict(server, model, image)
                    answers.append((response.status_code, response.json().get("version"), time.monotonic() - started))
                ready = httpx.get(f"{server.url}/readyz", timeout=30, trust_env=False)
            hung_for = time.monotonic() - hung_at
            calls_during = _registry_calls(server) - calls_before
        finally:
            fault_mlflow.resume()

        assert {(status, version) for status, version, _ in answers} == {(200, "1"), (200, "2")}, answers
        # No request waited for MLflow's timeout: the catalogue refresh runs in the background...
        assert max(seconds for _, _, seconds in answers) < MLFLOW_TIMEOUT_S, answers
        # ...and after its failure, MLflow is asked at most once per retry interval (plus the refresh that hung).
        assert calls_during <= hung_for / REGISTRY_RETRY_S + 2, (calls_during, hung_for)
        assert ready is not None and ready.status_code == 200
        assert ready.json()["registry"].startswith("unreachable since "), ready.json()
        logger.info(
            "MLflow hung %.1f s: %d predictions, all 200, slowest %.3f s; %d calls reached MLflow",
            hung_for,
            len(answers),
            max(seconds for _, _, seconds in answers),
            calls_during,
        )

        # MLflow is back: the breaker's next probe gets through and the catalogue refreshes. (A connection the
        # stopped server had queued can be reset as it resumes: this test's own call waits until it answers.)
        client = MlflowClient(tracking_uri=fault_mlflow.url, registry_uri=fault_mlflow.url)
        _when_mlflow_answers(lambda: client.set_registered_model_alias(registered_name("cnn"), CHAMPION_ALIAS, "1"))
        try:
            deadline = time.monotonic() + 30
            while _predict(server, "cnn", image).json().get("version") != "1" and time.monotonic() < deadline:
                time.sleep(0.2)
            response = _predict(server, "cnn", image)
            assert (response.status_code, response.json()["version"]) == (200, "1")
            assert _readyz(server, lambda r: r.json().get("registry") == "reachable").json()["registry"] == "reachable"
        finally:
            client.delete_registered_model_alias(registered_name("cnn"), CHAMPION_ALIAS)
    finally:
        server.stop()


def test_mlflow_down_inference_restarted_and_damaged_cache_files(
    fault_mlflow: FaultMlflow, fault_zoo: FaultZoo, tmp_path: Path, service_logs: Path, sample_images: dict
) -> None:
    image = sample_images["meningioma"]
    cache = tmp_path / "cache"
    expected = {(m, v): fault_zoo.expected(m, v, image) for m, versions in fault_zoo.files.items() for v in versions}
    wanted = [("snn", None, "1"), ("cnn", None, "2"), ("cnn", "1", "1")]

    def assert_served_correctly(server: ManagedProcess, rounds: int = 1) -> None:
        for _ in range(rounds):
            for model, spec, version in wanted:
                response = _predict(server, model, image, spec)
                assert response.status_code == 200, response.text
                assert response.json()["version"] == version
                np.testing.assert_allclose(_probabilities(response), expected[(model, version)], atol=1e-5)
        logger.info("%d predictions, all 200 with the registered files' probabilities", rounds * len(wanted))

    first = _start_inference(fault_mlflow, cache, service_logs)
    try:
        assert _readyz(first, _ready).status_code == 200
        assert_served_correctly(first)  # every version used is now in the verified cache
        fault_mlflow.kill()
        assert_served_correctly(first, rounds=10)
        ready = _readyz(first, lambda r: r.json().get("registry", "").startswith("unreachable since "), 20)
        assert ready.status_code == 200, ready.text
    finally:
        first.stop()

    # A restart while MLflow is down: the kept catalogue and the verified files serve.
    second = _start_inference(fault_mlflow, cache, service_logs)
    try:
        ready = _readyz(second, _ready)
        assert ready.status_code == 200, ready.text
        assert ready.json()["registry"].startswith("unreachable since ")
        assert ready.json()["models"] == {"cnn/2": True, "snn/1": True}
        assert_served_correctly(second, rounds=10)
        listing = httpx.get(f"{second.url}/v1/models", timeout=30, trust_env=False)
        assert listing.status_code == 200
        assert [m["model"] for m in listing.json()["models"]] == ["snn", "cnn"]
    finally:
        second.stop()

    # Damage the cache: cnn's default file truncated, snn's file copied over cnn version 1's.
    default_file, other_file = _cache_file(cache, "cnn", "2"), _cache_file(cache, "cnn", "1")
    default_file.write_bytes(default_file.read_bytes()[:200])
    other_file.write_bytes(_cache_file(cache, "snn", "1").read_bytes())

    third = _start_inference(fault_mlflow, cache, service_logs)
    try:
        ready = _readyz(third, lambda r: r.json().get("error", {}).get("code") == "MODEL_NOT_READY" and "cnn" in r.text)
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["details"] == {"models": ["cnn"]}
        assert ready.headers["retry-after"]
        for spec in (None, "1"):  # never served: a clear error while the registered file cannot be fetched
            refused = _predict(third, "cnn", image, spec)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "REGISTRY_UNAVAILABLE"
            assert refused.headers["retry-after"]
        assert _predict(third, "snn", image).status_code == 200
        assert not default_file.exists() and not other_file.exists()  # deleted, never opened

        fault_mlflow.start_again()
        ready = _readyz(third, _ready)
        assert ready.status_code == 200, ready.text
        assert ready.json()["registry"] == "reachable"
        assert_served_correctly(third)  # downloaded again and checked: the registered files
        for version in ("1", "2"):
            path = _cache_file(cache, "cnn", version)
            assert path.read_bytes() == fault_zoo.files["cnn"][version]
            signer = cache_signer(None, cache)  # the process's: derived from the MLflow password
            assert model_store.recorded_sha256(path.parent, signer) == model_store.file_sha256(path)
    finally:
        third.stop()
