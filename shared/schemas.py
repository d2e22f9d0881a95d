"""API schemas shared by the inference service and the gateway."""

from __future__ import annotations

from pydantic import BaseModel, Field

MODEL_FAMILIES: tuple[str, ...] = ("rf", "snn", "cnn", "mobilenetv2")
REGISTERED_NAME_PREFIX = "brain-tumor-"


def registered_name(family: str) -> str:
    """Short name ("cnn") to the MLflow registered model name ("brain-tumor-cnn")."""
    return f"{REGISTERED_NAME_PREFIX}{family}"


class PredictionOut(BaseModel):
    model: str = Field(description="Short model name, e.g. cnn.")
    version: str = Field(description="Registered model version that answered.")
    label: str
    probabilities: dict[str, float]
    latency_ms: float = Field(description="Time spent in preprocessing and the model, in milliseconds.")


class ModelVersionInfo(BaseModel):
    version: str
    aliases: list[str] = []
    run_id: str | None = None
    created_at: str | None = None
    metrics: dict[str, float] = {}


class ModelInfo(BaseModel):
    model: str
    registered_name: str
    default_version: str | None = Field(description="Version served when the request names none.")
    versions: list[ModelVersionInfo]


class ModelsOut(BaseModel):
    models: list[ModelInfo]


class CompareItem(BaseModel):
    model: str
    ok: bool
    result: PredictionOut | None = None
    error: dict | None = None


class CompareOut(BaseModel):
    results: list[CompareItem]
    agree: bool = Field(description="True when every model that answered gave the same label.")
    labels: dict[str, str]


class ErrorDetail(BaseModel):
    code: str = Field(description="Symbolic error code, e.g. MODEL_NOT_FOUND (shared/errors.py ErrorCode).")
    message: str = Field(description="What was expected and what was received; never echoes an upload.")
    request_id: str
    details: dict | None = None


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: ErrorDetail
