"""Fixtures shared by every test: free ports, service subprocesses, a real MLflow server and a
registry of small real ONNX models for all four model names.

Heavy imports (scikit-learn, skl2onnx, mlflow) happen inside fixtures, so tests that need none
of this start fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# --import-mode=importlib leaves sys.path alone; plain `pytest` (not `python -m pytest`) then could
# not import the project's packages.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.processes import free_port  # noqa: E402
from shared.contract import CLASS_NAMES, METADATA_KEY, OUTPUT_NAME, PreprocessingContract  # noqa: E402
from shared.dataset import SAMPLE_DATA_DIR, discover, load_arrays  # noqa: E402
from shared.imaging import decode_to_array, to_model_input  # noqa: E402
from shared.schemas import registered_name  # noqa: E402

# load(image_size) -> (uint8 images (N, size, size), labels)
SampleArrays = Callable[[int], tuple[np.ndarray, np.ndarray]]


# -- processes and ports ---------------------------------------------------------------------------


@pytest.fixture
def unused_url() -> str:
    """An http URL on loopback where nothing listens: stands for a service that is down."""
    return f"http://127.0.0.1:{free_port()}"


class TcpProxy:
    """Forwards a loopback port to another one; ``close()`` then makes the target look down.

    Lets a test cut a real service off mid-test (connections refused, pooled ones reset) without
    stopping a server that other tests share.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str], TcpProxy]]:
    """``proxy(url) -> TcpProxy`` in front of a loopback service; closed at teardown."""
    proxies: list[TcpProxy] = []

    def make(url: str) -> TcpProxy:
        proxy = TcpProxy(int(url.rsplit(":", 1)[1].split("/", 1)[0]))
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@dataclass
class ServiceProcess:
    """A server started as a subprocess in its own process group, with its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the process group (servers such as mlflow start worker children)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def project_env(**overrides: str) -> dict[str, str]:
    """The current environment with the project on PYTHONPATH, plus overrides."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(overrides)
    return env


@contextmanager
def app_clients(create_app: Callable[[Any], Any], settings_type: type, **defaults: Any) -> Iterator[Callable[..., Any]]:
    """``make(**settings) -> TestClient`` for in-process apps with their lifespan running; every client
    made is closed at the end. ``defaults`` are settings used unless a call overrides them."""
    from fastapi.testclient import TestClient

    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(settings_type(**{**defaults, **overrides})), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def start_service(
    name: str,
    command: list[str],
    *,
    port: int,
    health_path: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> ServiceProcess:
    """Start a server and wait until ``health_path`` answers 200; fail with its log otherwise."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env or project_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = ServiceProcess(name, f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode} during start-up:\n{service.log_tail()}")
        try:
            if httpx.get(service.url + health_path, timeout=2.0).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    service.stop()
    pytest.fail(f"{name} did not answer {health_path} within {timeout_s:.0f} s:\n{service.log_tail()}")


# -- sample data -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sample_images() -> dict[str, bytes]:
    """One JPEG file's bytes per class, from the sample data shipped in shared/."""
    layout = discover(SAMPLE_DATA_DIR)
    images: dict[str, bytes] = {}
    for path, label in zip(layout.train.paths, layout.train.labels, strict=True):
        images.setdefault(CLASS_NAMES[int(label)], path.read_bytes())
    return images


@pytest.fixture(scope="session")
def sample_arrays(tmp_path_factory: pytest.TempPathFactory) -> SampleArrays:
    """``load(image_size) -> (uint8 images (N, s, s), labels)`` for the shipped sample data, cached."""
    layout = discover(SAMPLE_DATA_DIR)
    cache_dir = tmp_path_factory.mktemp("image-cache")

    def load(image_size: int) -> tuple[np.ndarray, np.ndarray]:
        return load_arrays(layout.train, image_size, cache_dir=cache_dir), layout.train.labels

    return load


# -- small real ONNX models ------------------------------------------------------------------------


def sklearn_to_onnx(estimator: Any, contract: PreprocessingContract, *, with_contract: bool = True) -> bytes:
    """Convert a fitted scikit-learn classifier (trained on flat unit-scaled pixels) to the stored form.

    The graph gets the contract's input name and shape and a single ``probabilities`` output. For an
    "nhwc" layout or "raw" scaling, a reshape / 1/255 step is put in front, so the ONNX model expects
    exactly what the contract describes while the estimator inside still sees flat unit pixels.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    features = contract.image_size**2
    inner_input = "features"
    proto = convert_sklearn(
        estimator,
        initial_types=[(inner_input, FloatTensorType([None, features]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    graph = proto.graph
    kept = [out for out in graph.output if out.name == OUTPUT_NAME]
    assert kept, f"skl2onnx produced outputs {[o.name for o in graph.output]}"
    del graph.output[:]
    graph.output.extend(kept)

    # Adapter from the contract's tensor to the estimator's flat unit features.
    nodes = []
    current = contract.input_name
    if contract.layout == "nhwc":
        shape_const = numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat_shape")
        graph.initializer.append(shape_const)
        nodes.append(helper.make_node("Reshape", [current, "flat_shape"], ["flat"]))
        current = "flat"
    if contract.scaling == "raw":
        scale_const = numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "unit_scale")
        graph.initializer.append(scale_const)
        nodes.append(helper.make_node("Mul", [current, "unit_scale"], ["scaled"]))
        current = "scaled"
    nodes.append(helper.make_node("Identity", [current], [inner_input]))
    shape = ["N" if dim is None else dim for dim in contract.input_shape()]
    new_input = helper.make_tensor_value_info(contract.input_name, TensorProto.FLOAT, shape)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    del graph.input[:]
    graph.input.append(new_input)

    if with_contract:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, contract.to_json()
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


@dataclass
class TrainedVersion:
    """A registered version: the estimator behind it and the contract its ONNX file carries."""

    version: str
    estimator: Any
    contract: PreprocessingContract
    run_id: str
    metrics: dict[str, float]

    def expected_probabilities(self, image: bytes) -> np.ndarray:
        """What the estimator itself says for an image file, for round-trip comparisons."""
        pixels = decode_to_array(image, self.contract.image_size)
        flat = PreprocessingContract(layout="flat", scaling="unit", image_size=self.contract.image_size)
        return np.asarray(self.estimator.predict_proba(to_model_input(pixels, flat))[0])


@dataclass
class ModelZoo:
    """What the ``model_zoo`` fixture registered: short name -> versions, and the aliases set."""

    tracking_uri: str
    versions: dict[str, list[TrainedVersion]] = field(default_factory=dict)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)

    def version(self, model: str, version: str) -> TrainedVersion:
        return next(v for v in self.versions[model] if v.version == version)

    def default_version(self, model: str) -> str:
        """The ``champion`` alias when set, else the latest version (what inference should serve)."""
        return self.aliases.get(model, {}).get("champion") or max((v.version for v in self.versions[model]), key=int)


def register_onnx_model(
    tracking_uri: str,
    model: str,
    onnx_bytes: bytes,
    *,
    metrics: dict[str, float] | None = None,
    experiment: str = "tests",
) -> tuple[str, str]:
    """Log ``onnx/model.onnx`` in a new run and register it as a version of brain-tumor-<model>.

    Registered exactly as the storage contract says (source = the run's ``onnx/`` folder).
    Returns (version, run_id).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from shared.contract import ONNX_ARTIFACT_DIR, ONNX_FILENAME

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=f"{model}-test")
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_FILENAME
        path.write_bytes(onnx_bytes)
        client.log_artifact(run_id, str(path), artifact_path=ONNX_ARTIFACT_DIR)
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)
    name = registered_name(model)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{ONNX_ARTIFACT_DIR}", run_id=run_id)
    return str(version.version), run_id


def set_alias(tracking_uri: str, model: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        registered_name(model), alias, version
    )


def fit_on_sample(estimator: Any, image_size: int, sample_arrays: SampleArrays) -> Any:
    """Fit a scikit-learn classifier on the sample images as flat unit-scaled pixels."""
    pixels, labels = sample_arrays(image_size)
    flat = PreprocessingContract(layout="flat", scaling="unit", image_size=image_size)
    return estimator.fit(to_model_input(pixels, flat), labels)


@pytest.fixture(scope="session")
def make_onnx(sample_arrays: SampleArrays) -> Callable[..., tuple[bytes, Any]]:
    """``make_onnx(contract, estimator=None, with_contract=True) -> (onnx bytes, fitted estimator)``.

    Without an estimator, a logistic regression is fitted on the sample images.
    """

    def make(
        contract: PreprocessingContract, estimator: Any = None, *, with_contract: bool = True
    ) -> tuple[bytes, Any]:
        if estimator is None:
            from sklearn.linear_model import LogisticRegression

            estimator = LogisticRegression(max_iter=200)
        fitted = fit_on_sample(estimator, contract.image_size, sample_arrays)
        return sklearn_to_onnx(fitted, contract, with_contract=with_contract), fitted

    return make


# -- MLflow and the services -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the logs of every subprocess the tests start (printed when one fails to start)."""
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[ServiceProcess]:
    """A real ``mlflow server`` (SQLite store, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--default-artifact-root", "mlflow-artifacts:/",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    # No job runner: it forks a handful of queue consumers that only slow a 2-core machine down.
    env = project_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = start_service("mlflow", command, port=port, health_path="/health", log_dir=service_logs, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_zoo(mlflow_server: ServiceProcess, sample_arrays: SampleArrays) -> ModelZoo:
    """Small real models registered under all four names, with versions and aliases to resolve:

    - rf: versions 1 and 2 (random forests), alias champion -> 1 (so the default is not the latest)
    - snn: version 1 (logistic regression), alias best -> 1, no champion
    - cnn: versions 1 and 2, "nhwc" layout, no alias (default: latest = 2)
    - mobilenetv2: version 1, "nhwc" layout, "raw" scaling, 24 px images
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    zoo = ModelZoo(tracking_uri=mlflow_server.url)

    flat32 = PreprocessingContract(layout="flat", scaling="unit", image_size=32)
    nhwc32 = PreprocessingContract(layout="nhwc", scaling="unit", image_size=32)
    nhwc24_raw = PreprocessingContract(layout="nhwc", scaling="raw", image_size=24)
    plan: list[tuple[str, Any, PreprocessingContract]] = [
        ("rf", RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0), flat32),
        ("rf", RandomForestClassifier(n_estimators=8, max_depth=6, random_state=1), flat32),
        ("snn", LogisticRegression(max_iter=200), flat32),
        ("cnn", RandomForestClassifier(n_estimators=6, max_depth=5, random_state=2), nhwc32),
        ("cnn", LogisticRegression(max_iter=200, C=0.1), nhwc32),
        ("mobilenetv2", LogisticRegression(max_iter=200), nhwc24_raw),
    ]
    for index, (model, estimator, contract) in enumerate(plan):
        fitted = fit_on_sample(estimator, contract.image_size, sample_arrays)
        metrics = {"test_accuracy": round(0.5 + index / 20, 3), "test_f1_macro": round(0.45 + index / 20, 3)}
        version, run_id = register_onnx_model(
            zoo.tracking_uri, model, sklearn_to_onnx(fitted, contract), metrics=metrics
        )
        zoo.versions.setdefault(model, []).append(TrainedVersion(version, fitted, contract, run_id, metrics))
    for model, alias, version in (("rf", "champion", "1"), ("snn", "best", "1")):
        set_alias(zoo.tracking_uri, model, alias, version)
        zoo.aliases.setdefault(model, {})[alias] = version
    return zoo


def start_uvicorn(name: str, app: str, port: int, env: dict[str, str], log_dir: Path) -> ServiceProcess:
    """A service started as the stack starts it (``uvicorn <app>`` on loopback), once /healthz answers."""
    command = [sys.executable, "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1", "--port", str(port)]
    return start_service(name, command, port=port, health_path="/healthz", log_dir=log_dir, env=env)


@pytest.fixture(scope="session")
def inference_server(
    model_zoo: ModelZoo, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[ServiceProcess]:
    """The inference service as a real process serving the zoo, started as the stack starts it
    (``uvicorn services.inference.main:create_app``).

    Debug endpoints are on, so tests can read which modules the process has loaded.
    """
    port = free_port()
    env = project_env(
        MLFLOW_TRACKING_URI=model_zoo.tracking_uri,
        BT_INFERENCE_PORT=str(port),
        BT_INFERENCE_CACHE_DIR=str(tmp_path_factory.mktemp("inference-cache")),
        BT_INFERENCE_DEBUG_ENDPOINTS="true",
    )
    server = start_uvicorn("inference", "services.inference.main:create_app", port, env, service_logs)
    yield server
    server.stop()


@pytest.fixture
def inference_app_client(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make(**settings) -> TestClient`` for an in-process inference app, lifespan running.

    Settings not given default to a fresh cache folder, no preload and debug endpoints off.
    """
    from services.inference.config import Settings
    from services.inference.main import create_app

    with app_clients(create_app, Settings, cache_dir=tmp_path / "inference-cache", preload=False) as make:
        yield make


@pytest.fixture
def inference_client(model_zoo: ModelZoo, inference_app_client: Callable[..., Any]) -> Any:
    """An in-process inference app (TestClient) serving the test zoo."""
    return inference_app_client(tracking_uri=model_zoo.tracking_uri)


@pytest.fixture
def gateway_app_client() -> Iterator[Callable[..., Any]]:
    """``make(**settings) -> TestClient`` for an in-process gateway app, lifespan running."""
    from services.gateway.config import Settings
    from services.gateway.main import create_app

    with app_clients(create_app, Settings) as make:
        yield make


@pytest.fixture
def gateway_client(inference_server: ServiceProcess, gateway_app_client: Callable[..., Any]) -> Any:
    """An in-process gateway (TestClient) in front of the real inference process serving the zoo."""
    return gateway_app_client(inference_url=inference_server.url)


@pytest.fixture(scope="session")
def explainer_server(inference_server: ServiceProcess, service_logs: Path) -> Iterator[ServiceProcess]:
    """The explainer (LIME) as a real process in front of ``inference_server``, started as the stack
    starts it (``uvicorn services.explainer.main:create_app``)."""
    port = free_port()
    env = project_env(BT_EXPLAINER_PORT=str(port), BT_EXPLAINER_INFERENCE_URL=inference_server.url)
    server = start_uvicorn("explainer", "services.explainer.main:create_app", port, env, service_logs)
    yield server
    server.stop()


@pytest.fixture
def explainer_app_client(inference_server: ServiceProcess) -> Iterator[Callable[..., Any]]:
    """``make(**settings) -> TestClient`` for an in-process explainer app, lifespan running; by default
    in front of the real inference process."""
    from services.explainer.config import Settings
    from services.explainer.main import create_app

    with app_clients(create_app, Settings, inference_url=inference_server.url) as make:
        yield make


@pytest.fixture
def explainer_client(explainer_app_client: Callable[..., Any]) -> Any:
    """An in-process explainer (TestClient) in front of the real inference process serving the zoo."""
    return explainer_app_client()


@pytest.fixture(scope="session")
def gateway_server(
    mlflow_server: ServiceProcess,
    inference_server: ServiceProcess,
    explainer_server: ServiceProcess,
    service_logs: Path,
) -> Iterator[ServiceProcess]:
    """The gateway as a real process (``python -m services.gateway``) in front of ``inference_server``
    and ``explainer_server``, linking to ``mlflow_server`` as its MLflow UI."""
    port = free_port()
    env = project_env(
        BT_GATEWAY_PORT=str(port),
        BT_GATEWAY_INFERENCE_URL=inference_server.url,
        BT_GATEWAY_EXPLAINER_URL=explainer_server.url,
        BT_GATEWAY_MLFLOW_UI_URL=mlflow_server.url,
    )
    server = start_service(
        "gateway",
        [sys.executable, "-m", "services.gateway"],
        port=port,
        health_path="/healthz",
        log_dir=service_logs,
        env=env,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mobilenetv2_weights() -> Path:
    """The ImageNet MobileNetV2 no-top weights; the tests pass the path in (BT_MOBILENETV2_WEIGHTS),
    defaulting to the copy provided beside the repository. Nothing is ever downloaded."""
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    path = Path(os.environ.get("BT_MOBILENETV2_WEIGHTS", ROOT.parent / "shared" / "weights" / name))
    assert path.is_file(), f"MobileNetV2 weights not found at {path}; set BT_MOBILENETV2_WEIGHTS"
    return path


@pytest.fixture
def start_gateway(service_logs: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``start(**BT_GATEWAY_settings) -> ServiceProcess``: one more gateway process with its own
    settings (e.g. an inference URL where nothing listens); stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(**settings: str) -> ServiceProcess:
        port = free_port()
        env = project_env(BT_GATEWAY_PORT=str(port), **{f"BT_GATEWAY_{k.upper()}": v for k, v in settings.items()})
        server = start_service(
            f"gateway-{port}",
            [sys.executable, "-m", "services.gateway"],
            port=port,
            health_path="/healthz",
            log_dir=service_logs,
            env=env,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
