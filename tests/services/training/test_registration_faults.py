"""Registration when MLflow goes away midway, against a real MLflow server of this module's own (never the
session's): the registration functions of ``services.training.registration`` are driven through a proxy that
notices the very request at which MLflow should be gone, then either kills the real server (SIGKILL) or
cuts every connection to it. Afterwards MLflow is asked directly: no version without its file, no alias
pointing at a version that does not exist, and the error names the step.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from deploy.processes import LOOPBACK, ManagedProcess, free_port, loopback_url, start_mlflow
from services.training import registration, tracking
from services.training.registration import Candidate, LoggedFile, standing_on_test_split
from shared.core.contract import ONNX_FILENAME, PreprocessingContract
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import BEST_ALIAS, CHAMPION_ALIAS, registered_name

SPLIT = "split-of-these-tests"


class CuttingProxy:
    """Forwards a loopback port to MLflow; once armed, the request whose bytes contain ``pattern`` (its
    ``occurrence``-th) is not forwarded: ``on_cut`` runs (e.g. kill MLflow), and from then on every
    connection is dropped, as if MLflow were gone, until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server((LOOPBACK, 0))
        self._server.settimeout(0.1)
        self.url = loopback_url(int(self._server.getsockname()[1]))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._pattern: bytes | None = None
        self._remaining = 0
        self._on_cut: Callable[[], None] = lambda: None
        self.down = threading.Event()
        self.cut_happened = threading.Event()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: bytes, occurrence: int = 1, on_cut: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._pattern, self._remaining = pattern, occurrence
            self._on_cut = on_cut or (lambda: None)

    def restore(self) -> None:
        with self._lock:
            self._pattern = None
        self.cut_happened.clear()
        self.down.clear()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _should_cut(self, chunk: bytes) -> bool:
        with self._lock:
            if self._pattern is None or self._pattern not in chunk:
                return False
            self._remaining -= 1
            if self._remaining > 0:
                return False
            self._pattern = None
            return True

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if self.down.is_set():
                    break
                if from_client and self._should_cut(chunk):
                    self.down.set()
                    self._on_cut()
                    self.cut_happened.set()
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            if self.down.is_set():
                self._drop_all()
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class RegistrationMlflow:
    """A real MLflow server behind a ``CuttingProxy``; it can be killed and started again on its port and data."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir, self.log_path, self.port = data_dir, log_path, free_port()
        self.server: ManagedProcess = start_mlflow(data_dir, self.port, log_path)
        self.proxy = CuttingProxy(self.port)

    def kill(self) -> None:
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=10)

    def start_again(self) -> None:
        self.server = start_mlflow(self.data_dir, self.port, self.log_path)

    def client(self) -> MlflowClient:
        """A client that talks to MLflow itself, not through the proxy."""
        return MlflowClient(tracking_uri=self.server.url, registry_uri=self.server.url)


@pytest.fixture(scope="module")
def registration_mlflow(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[RegistrationMlflow]:
    server = RegistrationMlflow(tmp_path_factory.mktemp("registration-mlflow"), service_logs / "registration.log")
    yield server
    server.proxy.close()
    server.server.stop()


@pytest.fixture
def through_proxy(registration_mlflow: RegistrationMlflow, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLflow's fluent API and default clients pointed at the proxy, with bounded calls (its defaults retry
    for minutes); put back afterwards."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registration_mlflow.proxy.url)
    mlflow.set_experiment("registration-faults")
    yield registration_mlflow.proxy.url
    registration_mlflow.proxy.restore()
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def onnx_file(make_onnx: Any) -> bytes:
    return make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=16))[0]


def _logged(onnx_bytes: bytes, family: str, accuracy: float) -> Any:
    """A finished family run with its metric and its logged MLflow Model (as the pipeline leaves it)."""
    with mlflow.start_run(run_name=family):
        mlflow.log_metric("test_accuracy", accuracy)
        return tracking.log_onnx_model(onnx_bytes, name=family)


def _register(name: str, logged: Any, onnx_bytes: bytes) -> str:
    return registration.register(name, LoggedFile.of_model(logged), onnx_bytes, "tests", {"test_files_sha256": SPLIT})


def _promote(rows: list[dict[str, Any]]) -> None:
    """The run's promotion step, as the pipeline drives it once every family is registered."""
    candidates = [
        Candidate(registered_name(row["family"]), row["version"], standing_on_test_split(SPLIT, row["metrics"]))
        for row in rows
    ]
    registration.promote_run(candidates, explicit=False, best_of=candidates)


def _assert_nothing_half_registered(client: MlflowClient) -> None:
    """Every version's file is there and is the one its tag names; every alias points at a version."""
    for model in client.search_registered_models():
        versions = {v.version: v for v in client.search_model_versions(f"name='{model.name}'")}
        for alias, number in (model.aliases or {}).items():
            assert str(number) in versions, f"{model.name}: alias {alias} -> missing version {number}"
        for version in versions.values():
            with tempfile.TemporaryDirectory() as folder:
                uri = client.get_model_version_download_uri(model.name, version.version)
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{uri}/{ONNX_FILENAME}", dst_path=folder, tracking_uri=client.tracking_uri
                )
                sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            assert version.tags[registration.ONNX_SHA256_TAG] == sha256, f"{model.name} v{version.version}"


@pytest.mark.parametrize(
    ("name", "step", "request_line"),
    [
        ("cut-at-file-check", "checking the logged file", b"GET /api/2.0/mlflow-artifacts/artifacts/"),
        ("cut-at-model", "creating the registered model", b"POST /api/2.0/mlflow/registered-models/create"),
        ("cut-at-version", "creating the version", b"POST /api/2.0/mlflow/model-versions/create"),
    ],
)
def test_mlflow_gone_before_the_version_exists_registers_nothing(
    registration_mlflow: RegistrationMlflow,
    through_proxy: str,
    onnx_file: bytes,
    name: str,
    step: str,
    request_line: bytes,
) -> None:
    logged = _logged(onnx_file, "snn", 0.7)
    registration_mlflow.proxy.arm(request_line)

    with pytest.raises(ServiceError) as caught:
        _register(name, logged, onnx_file)

    assert registration_mlflow.proxy.cut_happened.is_set()
    assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE
    assert caught.value.message.startswith(f"MLflow failed while {step} for {name} ")
    assert caught.value.message.endswith("no version was registered.")
    client = registration_mlflow.client()
    assert client.search_model_versions(f"name='{name}'") == []
    _assert_nothing_half_registered(client)


def test_mlflow_killed_while_the_version_is_created_then_a_new_run_registers(
    registration_mlflow: RegistrationMlflow, through_proxy: str, onnx_file: bytes
) -> None:
    name = registered_name("cnn")
    logged = _logged(onnx_file, "cnn", 0.8)
    registration_mlflow.proxy.arm(b"POST /api/2.0/mlflow/model-versions/create", on_cut=registration_mlflow.kill)

    with pytest.raises(ServiceError) as caught:
        _register(name, logged, onnx_file)

    assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE
    assert "creating the version" in caught.value.message
    # The client may see its connection dropped before the proxy's thread has finished the kill.
    assert registration_mlflow.proxy.cut_happened.wait(30)
    assert registration_mlflow.server.process.poll() is not None  # really killed at that request
    registration_mlflow.start_again()
    registration_mlflow.proxy.restore()
    client = registration_mlflow.client()
    assert client.search_model_versions(f"name='{name}'") == []
    _assert_nothing_half_registered(client)
    # MLflow back: the next run registers a complete version, under the model the failed one left empty.
    version = _register(name, _logged(onnx_file, "cnn", 0.8), onnx_file)
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == [version]
    _assert_nothing_half_registered(client)


def test_mlflow_gone_while_aliases_move_leaves_none_dangling(
    registration_mlflow: RegistrationMlflow, through_proxy: str, onnx_file: bytes
) -> None:
    rows = []
    for family, accuracy in (("rf", 0.9), ("snn", 0.6)):
        version = _register(registered_name(family), _logged(onnx_file, family, accuracy), onnx_file)
        rows.append({"family": family, "version": version, "metrics": {"test_accuracy": accuracy}})
    # The second alias move (snn's champion) is where MLflow goes away.
    registration_mlflow.proxy.arm(b"POST /api/2.0/mlflow/registered-models/alias", occurrence=2)

    with pytest.raises(ServiceError) as caught:
        _promote(rows)

    assert caught.value.code is ErrorCode.REGISTRY_UNAVAILABLE
    assert "while moving the aliases" in caught.value.message
    assert "aliases not moved yet still point at earlier versions" in caught.value.message
    registration_mlflow.proxy.restore()
    client = registration_mlflow.client()
    assert client.get_registered_model(registered_name("rf")).aliases == {CHAMPION_ALIAS: rows[0]["version"]}
    assert BEST_ALIAS not in client.get_registered_model(registered_name("snn")).aliases
    _assert_nothing_half_registered(client)
    # MLflow back: moving them again completes the run's aliases.
    _promote(rows)
    assert client.get_registered_model(registered_name("rf")).aliases == {
        CHAMPION_ALIAS: rows[0]["version"],
        BEST_ALIAS: rows[0]["version"],
    }
    _assert_nothing_half_registered(client)
