"""API schemas shared by the inference service and the gateway."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_serializer

from shared.core.contract import PreprocessingContract
from shared.core.masking import Fill
from shared.kit.errors import ServiceError

# Every model family: its short name -> the class that trains it ("module:Class"). A string, imported only by
# training (services.training.families.family_class), so that shared/ imports no service and a forest run never
# imports TensorFlow. Adding a family is one module in services/training/families/ and one line here.
FAMILY_CLASSES: dict[str, str] = {
    "rf": "services.training.families.random_forest:RandomForestFamily",
    "snn": "services.training.families.snn:ShallowNetFamily",
    "cnn": "services.training.families.cnn:SmallCnnFamily",
    "mobilenetv2": "services.training.families.mobilenetv2:MobileNetV2Family",
}
MODEL_FAMILIES: tuple[str, ...] = tuple(FAMILY_CLASSES)
# The header of a predict-pixels request that gives the shape (N,H,W) of the raw uint8 body.
PIXELS_SHAPE_HEADER = "x-pixels-shape"
REGISTERED_NAME_PREFIX = "brain-tumor-"
# Registry aliases: `champion` is each model's default version, `best` marks a run's overall winner.
CHAMPION_ALIAS = "champion"
BEST_ALIAS = "best"
# The version spec that names a model's newest version.
LATEST_VERSION = "latest"
# Most files in one predict-batch request to the inference service; the gateway splits longer batches.
PREDICT_BATCH_MAX_FILES = 64
# Most models in one comparison, on the gateway and on the inference service alike.
COMPARE_MAX_MODELS = 16
# The ensemble: served like a model (brain-tumor-ensemble) but not a training family; its registered versions
# pin their members ({family: version}) and weights in these tags (JSON objects).
ENSEMBLE_MODEL = "ensemble"
# Versions registered from the pretrained bundle (deploy/pretrained.py): what they were trained and evaluated on.
PRETRAINED_TAG = "pretrained_on"
# On a version refit from a champion's recipe: the recipe's version and MLflow run (its test-split figures).
RECIPE_VERSION_TAG = "recipe_version"
RECIPE_RUN_TAG = "recipe_run_id"
# The guard against non-MRI input (docs/ood-guard.md): a registered ONNX graph, not a model that classifies.
GUARD_REGISTERED_NAME = "brain-tumor-guard"
GUARD_METADATA_KEY = "brain_tumor_guard"
GUARD_INPUT_NAME = "pixels"
GUARD_OUTPUT_NAME = "ood_score"


def _drop_unset_ensemble_fields(model: BaseModel, data: dict) -> dict:
    """A single model's answer keeps its shape: the ensemble-only fields appear only when they are set."""
    for name in ("members", "weights", "pretrained_on"):
        if getattr(model, name, None) is None and isinstance(data, dict):
            data.pop(name, None)
    return data


def registered_name(family: str) -> str:
    """Short name ("cnn") to the MLflow registered model name ("brain-tumor-cnn")."""
    return f"{REGISTERED_NAME_PREFIX}{family}"


class OodOut(BaseModel):
    """What the guard says about an uploaded image (docs/ood-guard.md)."""

    score: float = Field(description="Out-of-distribution score: higher is less like a brain MRI slice.")
    threshold: float = Field(description="Scores above this are not brain MRI slices (refused in refuse mode).")
    flag: bool = Field(
        description="True when the score is above the threshold, or the DICOM file declares another modality than MR."
    )
    flag_threshold: float | None = Field(
        None, description="Scores above this are unusual for a brain MRI slice: answered, and referred."
    )
    unusual: bool = Field(False, description="True when the score is above flag_threshold, or flag is true.")
    declared_modality: str | None = Field(
        None,
        description='The modality a DICOM upload declares when it is not MR (its code: CT, US, NM, OT...; "other" '
        "for a value that is not a plain code): such a file is flagged whatever its score. Null otherwise.",
    )
    guard_version: str = Field(description="Registered version of brain-tumor-guard that scored the image.")


class OodCheckOut(BaseModel):
    """The guard's verdict on one image, without a prediction."""

    mode: str = Field(description="The service's guard mode: refuse, flag or off (BT_INFERENCE_OOD_MODE).")
    ood: OodOut | None = Field(description="The verdict; null when no guard is registered or the mode is off.")


class PredictionOut(BaseModel):
    model: str = Field(description="Short model name, e.g. cnn.")
    version: str = Field(description="Registered model version that answered.")
    label: str
    probabilities: dict[str, float]
    latency_ms: float = Field(description="Time spent in preprocessing and the model, in milliseconds.")
    members: dict[str, str] | None = Field(
        None, description='Ensemble only: the member models\' versions that answered, e.g. {"cnn": "3"}.'
    )
    ood: OodOut | None = Field(
        None, description="The guard's verdict on the image; null when no guard is registered or it is off."
    )
    prediction_set: list[str] | None = Field(
        None,
        description="The classes the model cannot rule out at the service's alpha (BT_INFERENCE_REFERRAL_ALPHA, "
        "default 0.05): the true class is in the set with probability at least 1 - alpha (split-conformal, "
        "docs/referral.md); most probable first. Null for a version registered without conformal thresholds.",
    )
    referral: bool = Field(
        False, description="True when a radiologist should check this answer: its set is not exactly one class, or "
        "the guard found the image unusual."
    )  # fmt: skip
    referral_reason: str | None = Field(None, description="Why the answer is referred, in words; null when it is not.")

    @model_serializer(mode="wrap")
    def _ensemble_fields_only_for_ensembles(self, handler):
        return _drop_unset_ensemble_fields(self, handler(self))


class ModelVersionInfo(BaseModel):
    version: str
    aliases: list[str] = []
    run_id: str | None = None
    created_at: str | None = None
    metrics: dict[str, float] = {}
    members: dict[str, str] | None = Field(
        None, description="Ensemble only: member model -> pinned version, for the members it runs (weight above 0)."
    )
    weights: dict[str, float] | None = Field(None, description="Ensemble only: member model -> weight.")
    pretrained_on: str | None = Field(
        None, description="Versions from the repository's pretrained bundle: what they were trained and evaluated on."
    )

    @model_serializer(mode="wrap")
    def _ensemble_fields_only_for_ensembles(self, handler):
        return _drop_unset_ensemble_fields(self, handler(self))


class ModelInfo(BaseModel):
    model: str
    registered_name: str
    default_version: str | None = Field(description="Version served when the request names none.")
    versions: list[ModelVersionInfo]


class ModelsOut(BaseModel):
    models: list[ModelInfo]


class ItemError(BaseModel):
    """One item's failure inside an answer that holds several (a comparison, a batch): the error body's
    code and message, the status the item alone would have had, no request id (the answer has one)."""

    code: str = Field(description="Symbolic error code, e.g. INVALID_IMAGE (shared/kit/errors.py ErrorCode).")
    message: str = Field(description="What was expected and what was received; never echoes an upload.")
    status: int = Field(description="The HTTP status this failure would have on its own, e.g. 415.")
    details: dict | None = None

    @classmethod
    def from_error(cls, error: ServiceError) -> ItemError:
        return cls(code=error.code.value, message=error.message, status=error.status, details=error.details or None)


class CompareItem(BaseModel):
    model: str
    ok: bool
    result: PredictionOut | None = None
    error: dict | None = Field(None, description="When the model failed: code, message, status (and details).")

    @classmethod
    def failed(cls, model: str, error: ServiceError) -> CompareItem:
        return cls(model=model, ok=False, error=ItemError.from_error(error).model_dump(exclude_none=True))


class CompareOut(BaseModel):
    results: list[CompareItem]
    agree: bool = Field(description="True when every model that answered gave the same label.")
    labels: dict[str, str]

    @classmethod
    def from_items(cls, items: list[CompareItem]) -> CompareOut:
        """The answer for these items: `labels` of the models that answered, `agree` if they gave one label."""
        labels = {item.model: item.result.label for item in items if item.ok and item.result is not None}
        return cls(results=items, agree=len(set(labels.values())) == 1, labels=labels)


class BatchItem(BaseModel):
    """The answer for one file of a batch: a prediction, or that file's own error."""

    index: int = Field(description="Position of the file in the request, from 0.")
    ok: bool
    result: PredictionOut | None = None
    error: ItemError | None = None


class BatchPredictionOut(BaseModel):
    """One answer per file, in the order the files were sent; a bad file does not fail the others."""

    results: list[BatchItem]


class ContractOut(BaseModel):
    """A registered version and the preprocessing contract embedded in its ONNX file."""

    model: str
    version: str = Field(description="The version the request resolved to (number, not alias).")
    contract: PreprocessingContract


class PixelsPredictionOut(BaseModel):
    """Class probabilities for a batch of decoded images, in the order they were sent."""

    model: str
    version: str
    class_names: list[str] = Field(description="Column order of `probabilities`.")
    probabilities: list[list[float]] = Field(description="One row per image, one column per class.")
    latency_ms: float = Field(description="Time spent in the model for the whole batch, in milliseconds.")


ExplainMethod = Literal["occlusion", "lime"]
EXPLAIN_METHODS: tuple[str, ...] = ("occlusion", "lime")


class RegionOut(BaseModel):
    """One region of the head and how much it matters for the explained class."""

    segment: int = Field(description="Region number in the explanation's label map (1..num_segments).")
    weight: float = Field(
        description="Effect on the explained class, positive for support, negative against it. Occlusion: the "
        "mean drop in the class's log-odds over the positions of the patch that hide the region (weight of evidence). "
        "LIME: the linear model's weight."
    )
    area_fraction: float = Field(description="Share of the image the region covers, 0..1.")
    bbox: tuple[float, float, float, float] = Field(
        description="x0, y0, x1, y1 of the region as fractions of the image's width and height."
    )


class ExplanationOut(BaseModel):
    """An explanation of one model's answer for one image: the regions of the head that support the class
    and those that argue against it. The background outside the head is never a region."""

    model: str
    version: str
    method: ExplainMethod = Field(description="occlusion (deterministic) or lime (seeded).")
    fill: Fill = Field(description="What a hidden region became: blur, grey (the head's mean) or black.")
    label: str = Field(description="The class explained: `label=` when given, else the predicted class.")
    predicted_label: str
    probabilities: dict[str, float] = Field(
        description="The model's answer for the upload, equal to `/v1/predict`'s for the same file."
    )
    seed: int | None = Field(description="LIME's seed; null for occlusion, which draws nothing at random.")
    num_samples: int = Field(description="Copies of the image, with regions hidden, that the model classified.")
    num_segments: int = Field(description="Regions the head was divided into.")
    regions: list[RegionOut] = Field(description="Regions that support the class (weight > 0), strongest first.")
    opposing_regions: list[RegionOut] = Field(
        description="Regions that argue against the class (weight < 0), strongest first."
    )
    fit_r2: float | None = Field(
        None, description="LIME: R^2 of its weighted linear model on the samples; null for occlusion."
    )
    intercept: float | None = Field(None, description="LIME: the linear model's intercept.")
    local_prediction: float | None = Field(None, description="LIME: the linear model's prediction for the whole image.")
    overlay_png: str = Field(
        description="Base64 PNG: the scan at its own size (at most 1024 px a side) with the weights as a heat "
        "map (warm: supports the class, cool: opposes it); supporting regions outlined in yellow, opposing ones "
        "in cyan."
    )
    overlay_width: int
    overlay_height: int
    latency_ms: float = Field(description="Time the explainer spent on the request, in milliseconds.")
    timings_ms: dict[str, float] = Field(description="Where the time went: regions, predict, fit, render.")
    ood: OodOut | None = Field(
        None, description="The inference service's guard verdict on the image (null: no guard registered, or off)."
    )


class MaskedPredictionOut(BaseModel):
    """Class probabilities for copies of one upload with regions hidden (``shared.core.masking``), in row order."""

    model: str
    version: str
    fill: Fill
    class_names: list[str] = Field(description="Column order of `probabilities`.")
    probabilities: list[list[float]] = Field(description="One row per copy (row of `keep`), one column per class.")
    latency_ms: float = Field(description="Time spent masking and in the model, in milliseconds.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Symbolic error code, e.g. MODEL_NOT_FOUND (shared/kit/errors.py ErrorCode).")
    message: str = Field(description="What was expected and what was received; never echoes an upload.")
    request_id: str
    details: dict | None = None


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: ErrorDetail
