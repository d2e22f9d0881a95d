"""Training service settings (env prefix BT_TRAINING_, plus MLFLOW_TRACKING_URI)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.dataset import SAMPLE_DATA_DIR


class TrainingSettings(BaseSettings):
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

