"""An S3-compatible object store on loopback for MLflow's artifacts: ``moto_server`` (moto[server], installed
from PyPI) as its own process, and a bucket made with boto3 as any S3 client would.

The compose stack uses MinIO instead; both speak the S3 API, so MLflow is told the same two things either way:
``--artifacts-destination s3://<bucket>/<prefix>`` and ``MLFLOW_S3_ENDPOINT_URL`` (plus the AWS credentials)
in the MLflow *server's* environment. Clients download artifacts through MLflow (proxied artifacts), so the
services never need boto3 or the store's credentials.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from deploy.processes import LOOPBACK, ManagedProcess, loopback_url, start_process

# moto accepts any key; real stores (MinIO, S3) get theirs from the environment of whoever starts MLflow.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bt-test-access-key",
    "AWS_SECRET_ACCESS_KEY": "bt-test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_env(endpoint_url: str, credentials: dict[str, str] | None = None) -> dict[str, str]:
    """What the MLflow server (and any boto3 client) needs to reach the store at ``endpoint_url``."""
    return {**(credentials or TEST_CREDENTIALS), "MLFLOW_S3_ENDPOINT_URL": endpoint_url}


def start_moto(port: int, log_path: Path, timeout: float = 30.0) -> ManagedProcess:
    """``moto_server`` on 127.0.0.1:``port``, counted as started once its API answers."""
    command = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    env = {**os.environ, **TEST_CREDENTIALS}
    return start_process("s3", command, env, log_path, loopback_url(port), "/moto-api/", timeout)


def s3_client(endpoint_url: str, credentials: dict[str, str] | None = None) -> Any:
    """A boto3 S3 client for the store at ``endpoint_url`` (never a proxy from the environment)."""
    import boto3
    from botocore.config import Config

    given = credentials or TEST_CREDENTIALS
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=given["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=given["AWS_SECRET_ACCESS_KEY"],
        region_name=given["AWS_DEFAULT_REGION"],
        config=Config(proxies={}, retries={"max_attempts": 2}),
    )


def create_bucket(endpoint_url: str, bucket: str, credentials: dict[str, str] | None = None) -> None:
    """Create ``bucket`` unless it exists (MLflow does not create the bucket it writes to)."""
    client = s3_client(endpoint_url, credentials)
    existing = {entry["Name"] for entry in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def object_keys(
    endpoint_url: str, bucket: str, prefix: str = "", credentials: dict[str, str] | None = None
) -> list[str]:
    """Every key under ``prefix`` in ``bucket``."""
    paginator = s3_client(endpoint_url, credentials).get_paginator("list_objects_v2")
    return [
        item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for item in page.get("Contents", [])
    ]
