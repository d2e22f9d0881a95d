"""What a training run is asked to do, and what it reports while it runs."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from shared.kit.params import refuse_unsafe_text
from shared.kit.schemas import MODEL_FAMILIES

if TYPE_CHECKING:
    Family = str
else:  # the names of shared.kit.schemas.FAMILY_CLASSES, listed as an enum in the API's JSON schema
    Family = Literal[MODEL_FAMILIES]
SearchMode = Literal["none", "quick", "seed"]
IMAGE_SIZE_LIMITS = (16, 512)
EPOCH_LIMITS = (1, 500)


class TrainingOptions(BaseModel):
    """Options shared by the command line and POST /v1/training-runs."""

    data_dir: Path | None = Field(None, description="Folder of images; the service's default when omitted.")
    families: list[Family] = Field(default_factory=lambda: list(MODEL_FAMILIES), min_length=1)
    search: SearchMode = Field(
        "quick", description="quick: small grid sized for 2 CPU cores; seed: the study's grids; none: fixed parameters."
    )
    max_trials: int | None = Field(None, ge=1, description="Cap on trials per family.")
    image_size: int | None = Field(
        None,
        ge=IMAGE_SIZE_LIMITS[0],
        le=IMAGE_SIZE_LIMITS[1],
        description="Input size for every family; each family's own default when omitted.",
    )
    test_fraction: float = Field(
        0.2,
        ge=0.0,
        le=0.5,
        description="Share of the images held out for testing when the folder has no Testing/ split; taken as one "
        "of round(1/test_fraction) stratified, duplicate-aware folds (0.2: one fold of 5, 0.3: one of 3). "
        "0: no test split, every image but the calibration slice trains and the run reports no test figures "
        "(for refitting a recipe evaluated before, see refit_champions).",
    )
    # Not 2**32 - 1: the folds and the refit's slice use seed + a small offset, and numpy caps seeds there.
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the split, the folds and every model.")
    epochs: int | None = Field(
        None, ge=EPOCH_LIMITS[0], le=EPOCH_LIMITS[1], description="Override the epochs of Keras families."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Parameters that replace the defaults and the search's choice, e.g. epochs."
    )
    backend: Literal["local", "dask"] = Field("local", description="Where search trials run.")
    scheduler: str | None = Field(None, description="Dask scheduler address, e.g. tcp://127.0.0.1:8786.")
    jobs: int = Field(1, ge=1, le=32, description="Local worker processes for search trials.")
    register_models: bool = Field(True, description="Register passing models in the MLflow registry.")
    promote: bool = Field(
        False,
        description="Make this run's versions the champions even where they do not beat the champion on the same "
        "test split (or cannot be compared with it: another split, a refit without one). Without it, champion "
        "moves only to a version that beats it on the same test split.",
    )
    fit_guard: bool = Field(
        False,
        description="Also fit and register a new guard against non-MRI input on this run's training images; "
        "promoted only when its cross-validated false-refusal rate is no worse than the champion guard's on "
        "the same images.",
    )
    refit_champions: bool = Field(
        False,
        description="Refit each family's champion recipe (the parameters of its registered champion, and the "
        "ensemble champion's weights) instead of searching; needs search 'none'. With test_fraction 0 this is the "
        "standard last step: the recipe evaluated on a split, refit on every image.",
    )

    @model_validator(mode="before")
    @classmethod
    def _safe_text(cls, data: Any) -> Any:
        # A NUL byte or an unpaired surrogate in a path fails deep in the file system (a 500 with a trace).
        return refuse_unsafe_text(data)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingOptions:
        if len(set(self.families)) != len(self.families):
            raise ValueError("each family may be named once")
        if self.refit_champions and self.search != "none":
            raise ValueError("refit_champions takes the champions' parameters: use search 'none'")
        if self.backend == "dask" and not self.scheduler:
            raise ValueError("backend 'dask' needs the scheduler's address, e.g. tcp://127.0.0.1:8786")
        # The same bounds as the top-level fields: an override must not size a run beyond them.
        for key, (low, high) in {"image_size": IMAGE_SIZE_LIMITS, "epochs": EPOCH_LIMITS}.items():
            if key in self.overrides and not _whole_number_within(self.overrides[key], low, high):
                raise ValueError(f"overrides.{key} must be a whole number from {low} to {high}")
        return self

    @model_validator(mode="after")
    def _overrides_are_read_by_a_family(self) -> TrainingOptions:
        # A misspelt key (max_feature for max_features) would otherwise be dropped without a word.
        if not self.overrides:
            return self
        from services.training.families import get_family  # scikit-learn only; TensorFlow loads later

        accepted = set().union(*(get_family(name).accepted_params() for name in self.families))
        unknown = sorted(set(self.overrides) - accepted)
        if unknown:
            named = [key[:40] for key in unknown[:5]]  # the client's own keys, kept short
            raise ValueError(f"no chosen family reads the parameters {named}; they take {sorted(accepted)}")
        return self


def _whole_number_within(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class FamilyState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class FamilyProgress(BaseModel):
    family: Family
    state: FamilyState = FamilyState.PENDING
    step: str = ""
    mlflow_run_id: str | None = None
    registered_name: str | None = None
    registered_version: str | None = None
    metrics: dict[str, float] = {}
    error: str | None = None


class Registration(BaseModel):
    """A version a run registered, and whether ``champion`` moved to it (and why, or why not)."""

    registered_name: str
    version: str
    champion: bool
    reason: str


# What a run reports as it goes: each family's progress, and each version it registered.
ProgressCallback = Callable[[FamilyProgress | Registration], None]
