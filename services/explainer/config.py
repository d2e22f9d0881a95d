"""Settings of the explainer service, read from ``BT_EXPLAINER_*`` variables.

The explanation defaults (method, fill, grid, samples, superpixels) are the settings' own: reading the settings
never imports LIME and, with it, scikit-learn.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.core.masking import DEFAULT_FILL, MAX_GRID_SIDE, MAX_REGIONS, Fill
from shared.kit.hosts import HostSettings
from shared.kit.schemas import ExplainMethod
from shared.kit.service import DEFAULT_MAX_UPLOAD_BYTES
from shared.kit.upstream import ServiceUrl


class Settings(HostSettings, BaseSettings):
    """Everything the explainer can be told; bad values stop it at start-up."""

    model_config = SettingsConfigDict(env_prefix="BT_EXPLAINER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8003, ge=1, le=65535)
    inference_url: ServiceUrl = Field("http://127.0.0.1:8001", description="Base URL of the inference service.")
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, gt=0, description="Largest accepted image file.")
    default_method: ExplainMethod = Field("occlusion", description="Method when a request names none.")
    default_fill: Fill = Field(DEFAULT_FILL, description="What hidden regions become when a request names nothing.")
    occlusion_cells: int = Field(
        8, ge=2, le=32, description="Occlusion's patch: one cell of a cells x cells grid over the head's bounding box."
    )
    occlusion_shifts: int = Field(
        2,
        ge=1,
        le=4,
        description="Occlusion's grids: the patch grid and copies of it shifted by 1/shifts, 2/shifts, ... of a cell "
        "(shifts grids in all; 1: the plain grid). Tiles: (cells x shifts) a side, at most 32.",
    )
    default_num_samples: int = Field(500, description="LIME's copies per explanation when a request names none.")
    min_num_samples: int = Field(50, ge=2, description="Fewest LIME copies a request may ask for.")
    max_num_samples: int = Field(3000, ge=2, description="Most LIME copies a request may ask for.")
    num_segments: int = Field(48, ge=4, le=400, description="Superpixels SLIC aims for inside the head (LIME).")
    max_copies_per_request: int = Field(
        4096, ge=1, description="Most copies one request to the inference service's predict-masked carries."
    )
    max_concurrent: int = Field(1, ge=1, description="Explanations computed at once; the others wait their turn.")
    queue_timeout_s: float = Field(60.0, gt=0, description="Longest wait for a turn before EXPLAINER_BUSY (503).")
    overlay_max_side: int = Field(1024, ge=32, le=4096, description="Longest side of the overlay PNG.")
    request_timeout_s: float = Field(60.0, gt=0, description="Longest wait for one answer of the inference service.")
    connect_timeout_s: float = Field(3.0, gt=0, description="Longest wait to connect to the inference service.")

    @model_validator(mode="after")
    def _bounds_agree(self) -> Settings:
        if self.occlusion_cells * self.occlusion_shifts > MAX_GRID_SIDE:
            raise ValueError(
                f"occlusion's tiles: occlusion_cells x occlusion_shifts may be at most {MAX_GRID_SIDE} (a region map "
                f"holds at most {MAX_REGIONS} regions), got {self.occlusion_cells} x {self.occlusion_shifts}"
            )
        if not self.min_num_samples <= self.default_num_samples <= self.max_num_samples:
            raise ValueError(
                "expected min_num_samples <= default_num_samples <= max_num_samples, got "
                f"{self.min_num_samples}, {self.default_num_samples}, {self.max_num_samples}"
            )
        return self
