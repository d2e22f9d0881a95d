"""MLflow on real backing services, end to end: its backend store on a PostgreSQL cluster of our own (Debian's
server, initdb into a temporary folder, a free loopback port) and its artifacts in an S3-compatible store
(``moto_server`` as its own process), the way a team deployment runs it (compose: PostgreSQL and MinIO).

One test trains the sample with the training command (rf only, no search), which registers through MLflow;
then a real inference process, which has no S3 access of its own, downloads the version through MLflow and
serves a prediction. The registry rows are read from PostgreSQL and the ONNX file from the bucket, so the test
fails if either store was bypassed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg2
import pytest

from deploy.postgres import PostgresCluster, with_driver
from deploy.processes import PROJECT_ROOT, ManagedProcess, free_port, start_mlflow, start_service
from deploy.s3 import create_bucket, object_keys, s3_client, s3_env, start_moto
from shared.kit.schemas import registered_name

BUCKET = "bt-models"
PREFIX = "mlflow"


@dataclass
class BackingStores:
    postgres: PostgresCluster
    s3: ManagedProcess


@pytest.fixture(scope="module")
def stores(postgres_cluster: PostgresCluster, service_logs: Path) -> Iterator[BackingStores]:
    """The PostgreSQL cluster (the session's, tests/conftest.py) and the S3 store."""
    store = start_moto(free_port(), service_logs / "moto.log")
    try:
        backing = BackingStores(postgres_cluster, store)
        create_bucket(backing.s3.url, BUCKET)
        yield backing
    finally:
        store.stop()


@pytest.fixture(scope="module")
def mlflow_on_postgres_s3(
    stores: BackingStores, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[ManagedProcess]:
    server = start_mlflow(
        tmp_path_factory.mktemp("mlflow-pg-s3"),
        free_port(),
        service_logs / "mlflow-pg-s3.log",
        timeout=180.0,  # the first start creates MLflow's tables in PostgreSQL
        backend_uri=stores.postgres.uri,
        artifacts_destination=f"s3://{BUCKET}/{PREFIX}",
        extra_env=s3_env(stores.s3.url),
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/mlflow", "postgresql+psycopg2://u:p@db:5432/mlflow"),
        ("postgres://u:p@db/mlflow", "postgresql+psycopg2://u:p@db/mlflow"),
        ("postgresql+psycopg://u:p@db/mlflow", "postgresql+psycopg://u:p@db/mlflow"),
        ("sqlite:////var/mlflow.db", "sqlite:////var/mlflow.db"),
    ],
)
def test_a_postgresql_uri_names_the_installed_driver(given: str, used: str) -> None:
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed: psycopg2 is.
    assert with_driver(given) == used


def _client_env(tracking_uri: str, unused_url: str) -> dict[str, str]:
    """The environment of the training command and of inference: MLflow's address, and an S3 endpoint where
    nothing listens, so that any direct access to the store (instead of through MLflow) would fail."""
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BT_TRAINING_TRACKING_URI": tracking_uri,
        "BT_INFERENCE_TRACKING_URI": tracking_uri,
        "MLFLOW_S3_ENDPOINT_URL": unused_url,
    }


def test_train_register_and_serve_through_mlflow_on_postgresql_and_s3(
    mlflow_on_postgres_s3: ManagedProcess,
    stores: BackingStores,
    tmp_path: Path,
    service_logs: Path,
    sample_images: dict[str, bytes],
    unused_url: str,
) -> None:
    client_env = _client_env(mlflow_on_postgres_s3.url, unused_url)
    # A small forest (20 trees instead of 300): the stores are under test here, not the model.
    command = [sys.executable, "-m", "services.training.cli", "--families", "rf", "--search", "none"]
    command += ["--set", "n_estimators=20"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--report-dir", str(tmp_path / "reports")]
    trained = subprocess.run(
        command, env={**os.environ, **client_env}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    # The registry lives in PostgreSQL: MLflow's own tables there hold the new version.
    with psycopg2.connect(stores.postgres.dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT version FROM model_versions WHERE name = %s", (registered_name("rf"),))
        assert [row[0] for row in cursor.fetchall()] == [1]

    # The ONNX file lives in the bucket (MLflow, not the client, wrote it there).
    onnx_keys = [key for key in object_keys(stores.s3.url, BUCKET, f"{PREFIX}/") if key.endswith(".onnx")]
    assert onnx_keys, object_keys(stores.s3.url, BUCKET)
    stored = {
        hashlib.sha256(s3_client(stores.s3.url).get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
        for key in onnx_keys
    }

    cache_dir = tmp_path / "inference-cache"
    inference_env = {**client_env, "BT_INFERENCE_CACHE_DIR": str(cache_dir)}
    inference = start_service("inference", free_port(), inference_env, service_logs / "inference-pg-s3.log")
    try:
        response = httpx.post(
            f"{inference.url}/v1/models/rf/predict",
            files={"file": ("scan.jpg", sample_images["pituitary"], "image/jpeg")},
            timeout=60,
            trust_env=False,
        )
    finally:
        inference.stop()
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "1"
    # What inference downloaded (through MLflow) and served is the very file in the bucket.
    served = {hashlib.sha256(path.read_bytes()).hexdigest() for path in cache_dir.rglob("*.onnx")}
    assert served and served <= stored
