"""Fixtures shared by the tests of more than one folder: free ports, in-process app clients, the sample
data, small real ONNX models, a real MLflow server with a registry of such models under all four model
names, and the inference and explainer services as real processes.

Processes are started with ``deploy.processes``, exactly as the stack starts them. Fixtures that only
one service's tests use live in that folder's conftest.py (tests/services/<name>/conftest.py). Heavy
imports (scikit-learn, skl2onnx, mlflow) happen inside fixtures, so tests that need none of this start fast.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# --import-mode=importlib leaves sys.path alone; plain `pytest` (not `python -m pytest`) then could
# not import the project's packages.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.credentials import MlflowCredentials  # noqa: E402
from deploy.postgres import PostgresCluster, start_postgres  # noqa: E402
from deploy.processes import ManagedProcess, free_port, loopback_url, start_mlflow, start_service  # noqa: E402
from shared.core.contract import CLASS_NAMES, METADATA_KEY, OUTPUT_NAME, PreprocessingContract  # noqa: E402
from shared.core.dataset import SAMPLE_DATA_DIR, discover, load_arrays  # noqa: E402
from shared.core.ensemble_spec import EnsembleSpec  # noqa: E402
from shared.core.imaging import decode_to_array, to_model_input  # noqa: E402
from shared.kit.schemas import BEST_ALIAS, CHAMPION_ALIAS, registered_name  # noqa: E402

# Every MLflow server the tests start requires a user (basic-auth, as the stack runs it). One admin for the whole
# session, in MLflow's standard variables: every MlflowClient of the tests and every process they start (services,
# training, other MLflow servers) authenticates with it. Set at import, before any fixture starts a server.
TEST_MLFLOW_CREDENTIALS = MlflowCredentials.generate("tests-admin")
os.environ.update(TEST_MLFLOW_CREDENTIALS.client_env())

# Every service the tests start keeps its audit trail in a temporary folder, not in the repository's var/ (the
# trail's tests give their services trails of their own).
_AUDIT_FOLDER = Path(tempfile.mkdtemp(prefix="bt-tests-audit-"))
for _service in ("GATEWAY", "INFERENCE"):
    os.environ.setdefault(f"BT_{_service}_AUDIT_URI", f"sqlite:///{_AUDIT_FOLDER / 'trail.sqlite'}")

# The base URL of in-process TestClients: a Host the services accept by default (their allowed hosts are loopback).
LOOPBACK_BASE_URL = "http://127.0.0.1"

# load(image_size) -> (uint8 images (N, size, size), labels)
SampleArrays = Callable[[int], tuple[np.ndarray, np.ndarray]]


# -- ports and in-process apps ---------------------------------------------------------------------


@pytest.fixture
def unused_url() -> str:
    """An http URL on loopback where nothing listens: stands for a service that is down."""
    return loopback_url(free_port())


@pytest.fixture
def app_clients() -> Iterator[Callable[[Callable[[Any], Any], Any], Any]]:
    """``make(create_app, settings) -> TestClient`` for an in-process app with its lifespan running;
    every client made is closed at teardown. Each service's ``<name>_app_client`` fixture builds on it."""
    from fastapi.testclient import TestClient

    clients: list[TestClient] = []

    def make(create_app: Callable[[Any], Any], settings: Any) -> TestClient:
        # Loopback, as the services are reached: their trusted-host check refuses TestClient's "testserver".
        client = TestClient(create_app(settings), raise_server_exceptions=False, base_url=LOOPBACK_BASE_URL)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


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
        latest = max((v.version for v in self.versions[model]), key=int)
        return self.aliases.get(model, {}).get(CHAMPION_ALIAS) or latest


# How register_onnx_model stores a version: "mlflow-model" as training does today (an MLflow Model with the
# onnx flavor, registered from the logged model); "bare-onnx" as it did before (the run's onnx/ folder).
RegistryLayout = Literal["mlflow-model", "bare-onnx"]


def register_onnx_model(
    tracking_uri: str,
    model: str,
    onnx_bytes: bytes,
    *,
    metrics: dict[str, float] | None = None,
    experiment: str = "tests",
    layout: RegistryLayout = "mlflow-model",
    registered_as: str | None = None,
) -> tuple[str, str]:
    """Register ``onnx_bytes`` (its contract embedded) as a new version of brain-tumor-<model>, or of
    ``registered_as`` when given, from a new run that also holds the plain ``onnx/model.onnx``.

    The default layout is training's own (``services.training.tracking``); ``layout="bare-onnx"`` registers the
    run's ``onnx/`` folder, as versions made before MLflow Models were. Returns (version, run_id).
    """
    import mlflow
    from mlflow import MlflowClient

    from services.training import registration, tracking
    from services.training.registration import LoggedFile

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    name = registered_as or registered_name(model)
    # MLflow's fluent API (log_model) works on the process-wide tracking URI: point it here, then put it back.
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{model}-test") as run:
            if metrics:
                mlflow.log_metrics(metrics)
            tracking.log_onnx(onnx_bytes)
            if layout == "bare-onnx":
                version = _register_bare_onnx_folder(client, name, run.info.run_id)
            else:
                logged = tracking.log_onnx_model(onnx_bytes, name=model)
                version = registration.register(
                    name, LoggedFile.of_model(logged), onnx_bytes, description=f"{model} (tests)", tags={}
                )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return version, run.info.run_id


def _register_bare_onnx_folder(client: Any, name: str, run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    from shared.core.contract import ONNX_ARTIFACT_DIR

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{ONNX_ARTIFACT_DIR}"
    return str(client.create_model_version(name, source=source, run_id=run_id).version)


def register_ensemble(tracking_uri: str, spec: EnsembleSpec, experiment: str = "ensembles") -> str:
    """Register ``spec`` (over versions already registered) as a new version of
    brain-tumor-ensemble, through training's own path; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from services.training.ensemble_registration import log_spec, register_spec

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    # Its own experiment: an experiment another test made active lives on another server.
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_name="ensemble", experiment_id=experiment_id) as run:
            logged = log_spec(spec, {"weighting": "fitted"})
            return register_spec(logged, spec, "tests", run.info.run_id, "test accuracy 0.5", {})
    finally:
        mlflow.set_tracking_uri(previous)


def set_alias(tracking_uri: str, model: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        registered_name(model), alias, version
    )


def with_conformal_sets(onnx_bytes: bytes, fitted: Any, image_size: int, sample_arrays: SampleArrays) -> bytes:
    """The model with prediction sets' thresholds in its metadata, fitted on the sample's own probabilities: this
    tests how sets are served, not how well they cover (a weak model on its training images: some sets of two)."""
    import onnx

    from shared.core.conformal import CONFORMAL_METADATA_KEY, fit_conformal

    pixels, labels = sample_arrays(image_size)
    flat = PreprocessingContract(layout="flat", scaling="unit", image_size=image_size)
    sets = fit_conformal(fitted.predict_proba(to_model_input(pixels, flat)), labels)
    proto = onnx.load_from_string(onnx_bytes)
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, CONFORMAL_METADATA_KEY: sets.to_json()}
    )
    return proto.SerializeToString()


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


# -- MLflow and the services as processes --------------------------------------------------------


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the logs of every process the tests start (their end is in the error when one fails)."""
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, service_logs: Path) -> Iterator[ManagedProcess]:
    """A real ``mlflow server`` (SQLite store, proxied artifacts, basic-auth) on a free loopback port."""
    server = start_mlflow(
        tmp_path_factory.mktemp("mlflow"), free_port(), service_logs / "mlflow.log", credentials=TEST_MLFLOW_CREDENTIALS
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_cluster(service_logs: Path) -> Iterator[PostgresCluster]:
    """A real PostgreSQL cluster of our own (Debian's server, initdb into a temporary folder, a free loopback
    port, fsync off), as ``deploy.stack up --postgres`` runs one: MLflow's backend store, the audit trail's."""
    # Not under pytest's folder: as root, the cluster runs as the postgres user, who cannot enter root's 0700
    # pytest folder. /tmp is open to every user.
    folder = Path(tempfile.mkdtemp(prefix="bt-postgres-"))
    try:
        cluster = start_postgres(folder, free_port(), service_logs / "postgres.log", durable=False)
        yield cluster
        cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_credentials() -> MlflowCredentials:
    """The admin of every MLflow server the tests start (also in MLFLOW_TRACKING_USERNAME / _PASSWORD)."""
    return TEST_MLFLOW_CREDENTIALS


@pytest.fixture(scope="session")
def model_zoo(mlflow_server: ManagedProcess, sample_arrays: SampleArrays) -> ModelZoo:
    """Small real models registered under all four names, with versions and aliases to resolve:

    - rf: versions 1 and 2 (random forests), alias champion -> 1 (so the default is not the latest)
    - snn: version 1 (logistic regression), alias best -> 1, no champion
    - cnn: versions 1 and 2, "nhwc" layout, no alias (default: latest = 2); version 2 carries prediction sets'
      thresholds (shared.core.conformal), the others were "registered before them"
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
        onnx_bytes = sklearn_to_onnx(fitted, contract)
        if index == 4:
            onnx_bytes = with_conformal_sets(onnx_bytes, fitted, contract.image_size, sample_arrays)
        version, run_id = register_onnx_model(zoo.tracking_uri, model, onnx_bytes, metrics=metrics)
        zoo.versions.setdefault(model, []).append(TrainedVersion(version, fitted, contract, run_id, metrics))
    for model, alias, version in (("rf", CHAMPION_ALIAS, "1"), ("snn", BEST_ALIAS, "1")):
        set_alias(zoo.tracking_uri, model, alias, version)
        zoo.aliases.setdefault(model, {})[alias] = version
    return zoo


@pytest.fixture(scope="session")
def inference_audit_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The audit trail of ``inference_server`` (its /v2 answers), and of ``gateway_server``: one trail, as in a
    stack."""
    return f"sqlite:///{tmp_path_factory.mktemp('audit') / 'trail.sqlite'}"


@pytest.fixture(scope="session")
def inference_server(
    model_zoo: ModelZoo, tmp_path_factory: pytest.TempPathFactory, service_logs: Path, inference_audit_uri: str
) -> Iterator[ManagedProcess]:
    """The inference service as a real process serving the zoo, started as the stack starts it
    (``uvicorn --factory services.inference.main:create_app``).

    Debug endpoints are on, so tests can read which modules the process has loaded.
    """
    env = {
        "MLFLOW_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_CACHE_DIR": str(tmp_path_factory.mktemp("inference-cache")),
        "BT_INFERENCE_DEBUG_ENDPOINTS": "true",
        "BT_INFERENCE_AUDIT_URI": inference_audit_uri,
    }
    server = start_service("inference", free_port(), env, service_logs / "inference.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def explainer_server(inference_server: ManagedProcess, service_logs: Path) -> Iterator[ManagedProcess]:
    """The explainer (LIME) as a real process in front of ``inference_server``, started as the stack
    starts it (``uvicorn --factory services.explainer.main:create_app``)."""
    env = {"BT_EXPLAINER_INFERENCE_URL": inference_server.url}
    server = start_service("explainer", free_port(), env, service_logs / "explainer.log")
    yield server
    server.stop()


def mobilenetv2_weights_path() -> Path:
    """The ImageNet MobileNetV2 no-top weights (BT_MOBILENETV2_WEIGHTS, defaulting to the copy provided beside the
    repository), for helpers that are not fixtures. Nothing is ever downloaded."""
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    path = Path(os.environ.get("BT_MOBILENETV2_WEIGHTS", ROOT.parent / "shared" / "weights" / name))
    assert path.is_file(), f"MobileNetV2 weights not found at {path}; set BT_MOBILENETV2_WEIGHTS"
    return path


@pytest.fixture(scope="session")
def mobilenetv2_weights() -> Path:
    """The ImageNet MobileNetV2 no-top weights; the tests pass the path in (BT_MOBILENETV2_WEIGHTS),
    defaulting to the copy provided beside the repository. Nothing is ever downloaded."""
    return mobilenetv2_weights_path()


def fit_sample_guard(sample_arrays: SampleArrays, weights: Path) -> Any:
    """A real guard (``ood_guard.OodGuard``, both detectors) fitted on half the sample with its classes, each
    threshold the highest score of the other half: what the inference, route and bundle tests register."""
    from services.training.ood_guard import GUARD_IMAGE_SIZE, files_input, fit_guard

    pixels, labels = sample_arrays(GUARD_IMAGE_SIZE)
    inputs = files_input(discover(SAMPLE_DATA_DIR).train.paths, pixels)
    halves = [np.arange(start, len(labels), 2) for start in (0, 1)]
    fit, held_out = inputs.part(halves[0]), inputs.part(halves[1])
    return fit_guard(fit, held_out, quantile=1.0, weights=weights, labels=np.asarray(labels)[halves[0]])
