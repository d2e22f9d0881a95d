"""The audit trail and the caller tokens through real processes: the gateway (``python -m services.gateway``) in
front of the real inference and explainer processes, all on one SQLite trail, as a stack runs them.

Every classifying route (predict, batch, compare, explain, and inference's /v2 infer) writes one record per answer
with the version that answered, the caller, the input's sha256 and no file name; caller tokens on and off; a
trail that cannot be written still answers and is counted, and refuses with 503 when the records are required."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from deploy.postgres import PostgresCluster
from deploy.processes import ManagedProcess
from tests.error_body import error_body
from tests.prometheus_samples import parse, value

# A file name a record must never hold (nor anything else in the trail's file).
FILE_NAME = "jane-doe-1961-04-02.jpg"
TOKEN = "a-long-random-token-for-the-radiology-viewer"


def records(path: Path, count: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """The trail's records once it holds ``count`` (they are written by a background thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows: list[dict[str, Any]] = []
        if path.exists():
            with sqlite3.connect(path) as connection:
                connection.row_factory = sqlite3.Row
                try:
                    rows = [dict(row) for row in connection.execute("SELECT * FROM audit_records ORDER BY seq")]
                except sqlite3.OperationalError:  # the table is not created yet
                    rows = []
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, f"the trail holds {len(rows)} of {count} records"
        time.sleep(0.1)


def post_file(url: str, image: bytes, request_id: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    return httpx.post(
        url, params=params, files={"file": (FILE_NAME, image, "image/jpeg")},
        headers={"x-request-id": request_id, **(headers or {})}, timeout=120, trust_env=False,
    )  # fmt: skip


@pytest.fixture
def trail_path(inference_audit_uri: str) -> Path:
    return Path(inference_audit_uri.removeprefix("sqlite:///"))


@pytest.fixture
def audited_gateway(
    start_gateway: Callable[..., ManagedProcess],
    ready_inference: ManagedProcess,
    explainer_server: ManagedProcess,
    inference_audit_uri: str,
) -> ManagedProcess:
    """A gateway on the inference process's own trail: one chain written by both services."""
    return start_gateway(
        inference_url=ready_inference.url, explainer_url=explainer_server.url, audit_uri=inference_audit_uri
    )


def test_every_classifying_route_writes_one_record_per_answer(
    audited_gateway: ManagedProcess,
    ready_inference: ManagedProcess,
    trail_path: Path,
    sample_images: dict[str, bytes],
    model_zoo: Any,
) -> None:
    glioma, notumor = sample_images["glioma"], sample_images["notumor"]
    before = len(records(trail_path, 0))
    url = audited_gateway.url
    # rf's default is its champion (1), cnn's the latest (2): the record names the version that answered.
    assert post_file(f"{url}/v1/predict", glioma, "audit-predict", model="rf").status_code == 200
    batch = httpx.post(
        f"{url}/v1/predict/batch", params={"model": "cnn"}, headers={"x-request-id": "audit-batch"}, trust_env=False,
        files=[("files", (FILE_NAME, glioma)), ("files", ("b.txt", b"not an image")), ("files", ("c.jpg", notumor))],
        timeout=60,
    )  # fmt: skip
    assert batch.status_code == 200 and [item["ok"] for item in batch.json()["results"]] == [True, False, True]
    compare = post_file(f"{url}/v1/compare", notumor, "audit-compare", models="rf,cnn,nosuchmodel")
    assert compare.status_code == 200
    explain = post_file(f"{url}/v1/explain", glioma, "audit-explain", model="snn", num_samples=50)
    assert explain.status_code == 200, explain.text
    oip = httpx.post(
        f"{ready_inference.url}/v2/models/cnn/versions/1/infer", headers={"x-request-id": "audit-oip"},
        json={"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                          "data": [base64.b64encode(data).decode() for data in (glioma, notumor)]}]},
        timeout=60, trust_env=False,
    )  # fmt: skip
    assert oip.status_code == 200, oip.text

    rows = records(trail_path, before + 8)[before:]
    got = sorted((row["request_id"], row["route"], row["item"], row["model"], row["version"]) for row in rows)
    assert got == sorted([
        ("audit-predict", "/v1/predict", "0", "rf", "1"),
        ("audit-batch", "/v1/predict/batch", "0", "cnn", "2"),
        ("audit-batch", "/v1/predict/batch", "2", "cnn", "2"),
        ("audit-compare", "/v1/compare", "rf", "rf", "1"),
        ("audit-compare", "/v1/compare", "cnn", "cnn", "2"),
        ("audit-explain", "/v1/explain", "0", "snn", "1"),
        ("audit-oip", "/v2/models/{model}/versions/{version}/infer", "0", "cnn", "1"),
        ("audit-oip", "/v2/models/{model}/versions/{version}/infer", "1", "cnn", "1"),
    ])  # fmt: skip
    sha = {hashlib.sha256(glioma).hexdigest(): "glioma", hashlib.sha256(notumor).hexdigest(): "notumor"}
    sent = {("audit-predict", "0"): "glioma", ("audit-batch", "0"): "glioma", ("audit-batch", "2"): "notumor",
            ("audit-compare", "rf"): "notumor", ("audit-compare", "cnn"): "notumor",
            ("audit-explain", "0"): "glioma", ("audit-oip", "0"): "glioma", ("audit-oip", "1"): "notumor"}  # fmt: skip
    for row in rows:
        assert sha[row["input_sha256"]] == sent[(row["request_id"], row["item"])]
        assert row["caller"] == "anonymous"
        probabilities = json.loads(row["probabilities"])
        assert row["label"] == max(probabilities, key=probabilities.get)
    predicted = next(row for row in rows if row["request_id"] == "audit-predict")
    answer = post_file(f"{url}/v1/predict", glioma, "audit-predict-again", model="rf").json()
    assert json.loads(predicted["probabilities"]) == answer["probabilities"]
    # Nothing of the upload but its hash: the file name is nowhere in the trail's file.
    assert FILE_NAME.encode() not in trail_path.read_bytes()
    # Without caller tokens the schema declares no caller scheme and no 401: no request can get one.
    schema = httpx.get(f"{url}/openapi.json", trust_env=False).json()
    assert "401" not in schema["paths"]["/v1/predict"]["post"]["responses"]
    assert "CallerToken" not in schema["components"].get("securitySchemes", {})
    trail_file = trail_path.parent
    assert not any(FILE_NAME.encode() in path.read_bytes() for path in trail_file.iterdir() if path.is_file())


def test_caller_tokens_name_the_caller_and_refuse_others(
    start_gateway: Callable[..., ManagedProcess],
    ready_inference: ManagedProcess,
    tmp_path: Path,
    sample_images: dict[str, bytes],
) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"# viewer of the radiology ward\nradiology {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    trail = tmp_path / "tokens-trail.sqlite"
    gateway = start_gateway(inference_url=ready_inference.url, api_tokens=str(tokens), audit_uri=f"sqlite:///{trail}")
    image = sample_images["glioma"]
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {TOKEN}x"}):
        for route, params in (("predict", {"model": "rf"}), ("compare", {}), ("explain", {"model": "rf"})):
            refused = post_file(f"{gateway.url}/v1/{route}", image, "no-token", headers, **params)
            error_body(refused, 401, "UNAUTHORIZED", request_id=True)
            assert refused.headers["www-authenticate"] == "Bearer"
    batch = httpx.post(f"{gateway.url}/v1/predict/batch", params={"model": "rf"}, files=[("files", ("a", image))],
                       trust_env=False, timeout=30)  # fmt: skip
    error_body(batch, 401, "UNAUTHORIZED")
    allowed = post_file(f"{gateway.url}/v1/predict", image, "with-token", {"authorization": f"Bearer {TOKEN}"},
                        model="rf")  # fmt: skip
    assert allowed.status_code == 200, allowed.text
    # Health and the model list stay open: only the classifying routes take tokens.
    assert httpx.get(f"{gateway.url}/v1/models", trust_env=False, timeout=30).status_code == 200
    (row,) = records(trail, 1)
    assert (row["caller"], row["request_id"]) == ("radiology", "with-token")
    schema = httpx.get(f"{gateway.url}/openapi.json", trust_env=False).json()
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/compare", "/v1/explain"):
        assert "401" in schema["paths"][path]["post"]["responses"], path
        assert schema["paths"][path]["post"]["security"] == [{"CallerToken": []}]


def test_a_bad_tokens_file_stops_the_gateway_at_start_up(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from services.gateway.config import Settings

    bad = tmp_path / "api-tokens"
    bad.write_text("radiology not-a-sha256\n")
    with pytest.raises(ValidationError, match="line 1"):
        Settings(api_tokens=bad)
    with pytest.raises(ValidationError):
        Settings(api_tokens=tmp_path / "missing")


def broken_trail(folder: Path) -> Path:
    """A real SQLite trail whose inserts fail (a trigger aborts them, as a full disk or a lost database would)."""
    path = folder / "broken.sqlite"
    from shared.kit.audit.store import open_store

    open_store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    return path


def test_a_trail_that_cannot_be_written_still_answers_and_counts_the_failure(
    start_gateway: Callable[..., ManagedProcess],
    ready_inference: ManagedProcess,
    tmp_path: Path,
    sample_images: dict[str, bytes],
) -> None:
    gateway = start_gateway(inference_url=ready_inference.url, audit_uri=f"sqlite:///{broken_trail(tmp_path)}")
    for number in range(3):
        assert (
            post_file(f"{gateway.url}/v1/predict", sample_images["glioma"], f"lost-{number}", model="rf").status_code
            == 200
        )
    deadline = time.monotonic() + 20
    while value(parse(httpx.get(f"{gateway.url}/metrics", trust_env=False).text), "bt_audit_records_failed_total") < 3:
        assert time.monotonic() < deadline, "the failed records were not counted"
        time.sleep(0.1)
    samples = parse(httpx.get(f"{gateway.url}/metrics", trust_env=False).text)
    assert value(samples, "bt_audit_records_written_total") == 0
    assert "record(s) not written: IntegrityError: disk full" in gateway.log_path.read_text()


def test_required_records_refuse_the_answer_with_503(
    start_gateway: Callable[..., ManagedProcess],
    ready_inference: ManagedProcess,
    tmp_path: Path,
    sample_images: dict[str, bytes],
) -> None:
    gateway = start_gateway(
        inference_url=ready_inference.url, audit_uri=f"sqlite:///{broken_trail(tmp_path)}", audit_required="true"
    )
    refused = post_file(f"{gateway.url}/v1/predict", sample_images["glioma"], "must-record", model="rf")
    error_body(refused, 503, "AUDIT_UNAVAILABLE", request_id=True)
    assert "retry-after" in refused.headers
    samples = parse(httpx.get(f"{gateway.url}/metrics", trust_env=False).text)
    assert value(samples, "bt_audit_records_failed_total") == 1
    # A trail that works: the same setting answers, once the record is written.
    good = start_gateway(
        inference_url=ready_inference.url, audit_uri=f"sqlite:///{tmp_path / 'good.sqlite'}", audit_required="true"
    )
    assert post_file(f"{good.url}/v1/predict", sample_images["glioma"], "recorded", model="rf").status_code == 200
    assert value(parse(httpx.get(f"{good.url}/metrics", trust_env=False).text), "bt_audit_records_written_total") == 1


def test_the_trail_on_postgresql(
    start_gateway: Callable[..., ManagedProcess],
    ready_inference: ManagedProcess,
    postgres_cluster: PostgresCluster,
    sample_images: dict[str, bytes],
) -> None:
    """As compose and Kubernetes run it: the gateway's records in a PostgreSQL database, verified by bt-audit."""
    admin = psycopg2.connect(postgres_cluster.dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS audit_gateway")
        cursor.execute("CREATE DATABASE audit_gateway")
    admin.close()
    dsn = postgres_cluster.dsn_of("audit_gateway")
    gateway = start_gateway(inference_url=ready_inference.url, audit_uri=dsn, audit_required="true")
    for number in range(3):
        answer = post_file(f"{gateway.url}/v1/predict", sample_images["pituitary"], f"pg-{number}", model="cnn")
        assert answer.status_code == 200, answer.text
    connection = psycopg2.connect(dsn)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT request_id, model, version, caller, input_sha256 FROM audit_records ORDER BY seq")
        rows = cursor.fetchall()
    connection.close()
    digest = hashlib.sha256(sample_images["pituitary"]).hexdigest()
    assert rows == [(f"pg-{number}", "cnn", "2", "anonymous", digest) for number in range(3)]
    verified = subprocess.run(
        [sys.executable, "-m", "shared.kit.audit", "--uri", dsn, "verify"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and "OK: 3 record(s), positions 1..3" in verified.stdout, verified.stdout
