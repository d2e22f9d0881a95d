"""Settings of the gateway, read from ``BT_GATEWAY_*`` variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.service import DEFAULT_MAX_UPLOAD_BYTES
from shared.upstream import ServiceUrl


class Settings(BaseSettings):
    """Everything the gateway can be told; bad values stop it at start-up."""

    model_config = SettingsConfigDict(env_prefix="BT_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    inference_url: ServiceUrl = Field("http://127.0.0.1:8001", description="Base URL of the inference service.")
    explainer_url: ServiceUrl = Field("http://127.0.0.1:8003", description="Base URL of the explainer (LIME) service.")
    mlflow_ui_url: ServiceUrl = Field("http://127.0.0.1:5000", description="MLflow UI, for links shown to people.")
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, gt=0, description="Largest accepted image file.")
    # At most 1000: Starlette's multipart parser refuses more parts than that before any handler runs.
    max_batch_files: int = Field(
        32,
        ge=1,
        le=1000,
        description="Most files in one /v1/predict/batch request; its body may hold this many times max_upload_bytes.",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Longest wait for one upstream answer.")
    explain_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for an explanation (the explainer may queue requests)."
    )
    connect_timeout_s: float = Field(3.0, gt=0, description="Longest wait to connect to an upstream service.")
    max_connections: int = Field(32, ge=1, description="Connections kept to upstream services at most.")
