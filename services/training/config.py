"""Training service settings (env prefix BT_TRAINING_, plus MLFLOW_TRACKING_URI).

MLflow credentials are not settings here: MLflow's client reads MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD from the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.core.dataset import SAMPLE_DATA_DIR
from shared.kit.hosts import HostSettings
from shared.kit.service import DEFAULT_MAX_JSON_BODY_BYTES

# Where the stack keeps data for training (under its state folder, BT_STATE_DIR, var/ by default).
STATE_DATA_DIR = Path("var/data")


class TrainingSettings(HostSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BT_TRAINING_", extra="ignore", populate_by_name=True)
    # Where a setting has a generic variable too (MLFLOW_TRACKING_URI), the service's own comes first.

    # Where `python -m services.training` serves.
    host: str = "127.0.0.1"
    port: int = Field(8002, ge=1, le=65535)
    tracking_uri: str = Field(
        "http://127.0.0.1:5000",
        validation_alias=AliasChoices("BT_TRAINING_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    experiment: str = "brain-tumor-zoo"
    data_dir: Path = Field(SAMPLE_DATA_DIR, description="Default data folder when a request names none.")
    cache_dir: Path = Field(Path("var/cache"), description="Decoded image arrays and frozen features.")
    mobilenetv2_weights: Path | None = Field(
        None,
        validation_alias=AliasChoices("BT_TRAINING_MOBILENETV2_WEIGHTS", "BT_MOBILENETV2_WEIGHTS"),
        description="ImageNet MobileNetV2 no-top weights (.h5); falls back to Keras's cache folder.",
    )
    report_dir: Path = Field(Path("reports"), description="Where the comparison report is written.")
    max_body_bytes: int = Field(
        DEFAULT_MAX_JSON_BODY_BYTES, gt=0, description="Largest request body (JSON options); larger is 413."
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token that POST /v1/training-runs requires. Unset: starting runs over HTTP is disabled "
        "(403). The stack command generates one (var/secrets/api-token).",
    )
    # NoDecode: a plain comma-separated list of folders, not JSON.
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [SAMPLE_DATA_DIR, STATE_DATA_DIR],
        min_length=1,
        description="The only folders (with their subfolders) a request's data_dir may name, comma-separated. "
        "Default: the embedded sample and var/data. Any other path gets one answer, whether or not it exists.",
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    def data_folder(self, requested: Path | None) -> Path:
        """The folder a run trains on: the one it names, else this service's default (the one place the default
        applies: command line, HTTP and the pipeline all ask here)."""
        return Path(requested) if requested is not None else self.data_dir
