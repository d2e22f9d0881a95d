"""Settings of the gateway, read from ``BT_GATEWAY_*`` variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.gateway.dicomweb.settings import DicomWebSettings
from shared.kit.audit.settings import AuditSettings
from shared.kit.auth import CallerTokenSettings
from shared.kit.hosts import HostSettings
from shared.kit.service import DEFAULT_MAX_UPLOAD_BYTES
from shared.kit.upstream import ServiceUrl
from shared.kit.workers import WorkerSettings


class Settings(DicomWebSettings, HostSettings, WorkerSettings, CallerTokenSettings, AuditSettings, BaseSettings):
    """Everything the gateway can be told; bad values stop it at start-up."""

    model_config = SettingsConfigDict(env_prefix="BT_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    inference_url: ServiceUrl = Field(
        "http://127.0.0.1:8001", description="Base URL of the inference service, when it runs as one replica."
    )
    # NoDecode: the variable is a plain comma-separated list, not the JSON pydantic-settings expects for a list.
    inference_urls: Annotated[list[ServiceUrl], NoDecode] = Field(
        default_factory=list,
        description="Base URLs of the inference replicas, comma-separated; when given, inference_url is ignored. "
        "Empty: the one replica at inference_url.",
    )
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
    predict_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Longest wait for an inference replica's answer to a prediction or the model list (and per model "
        "of a comparison, per file of a batch); a replica that is stopped or overloaded gives 503 UPSTREAM_TIMEOUT.",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for a whole comparison or batch, and for any other upstream answer."
    )
    explain_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for an explanation (the explainer may queue requests)."
    )
    connect_timeout_s: float = Field(3.0, gt=0, description="Longest wait to connect to an upstream service.")
    max_connections: int = Field(32, ge=1, description="Connections kept to each upstream service (replica) at most.")
    health_check_interval_s: float = Field(
        1.0, gt=0, description="Pause between two readiness checks (GET /readyz) of every inference replica."
    )
    health_check_timeout_s: float = Field(
        2.0, gt=0, description="Longest wait for a replica's /readyz; longer counts as not ready."
    )

    @field_validator("inference_urls", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        """``"http://a:8001, http://b:8001"`` -> the two URLs; blanks are dropped."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def one_list_of_replicas(self) -> Settings:
        """Every replica once: a URL listed twice would get twice the traffic, surely a typo."""
        if not self.inference_urls:
            self.inference_urls = [self.inference_url]
        if len(set(self.inference_urls)) != len(self.inference_urls):
            raise ValueError(f"inference_urls lists a URL twice: {', '.join(self.inference_urls)}")
        return self
