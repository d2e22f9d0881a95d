"""Query parameters that more than one service takes: model and version names, and the explanation
parameters the gateway forwards to the explainer unchanged."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from shared.kit.schemas import CHAMPION_ALIAS, LATEST_VERSION, MODEL_FAMILIES

# Names and versions end up in upstream URLs, MLflow filters and cache paths: a safe alphabet only.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

MODEL_DESCRIPTION = f"Short model name: {', '.join(MODEL_FAMILIES)}."
VERSION_DESCRIPTION = (
    f"Version number, alias (e.g. {CHAMPION_ALIAS}) or `{LATEST_VERSION}`; "
    f"default: the `{CHAMPION_ALIAS}` alias if set, else the latest version."
)

ModelQuery = Annotated[str, Query(pattern=NAME_PATTERN, description=MODEL_DESCRIPTION, examples=["cnn"])]
VersionQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, description=VERSION_DESCRIPTION)]

# The explanation's parameters, the same on the gateway and on the explainer.
LabelQuery = Annotated[
    str | None,
    Query(max_length=64, description="Class to explain (e.g. glioma); default: the class the model predicts."),
]
SeedQuery = Annotated[int, Query(ge=0, le=2**32 - 1, description="Seed of LIME's sampling; same seed, same answer.")]
RegionsQuery = Annotated[int, Query(ge=1, le=50, description="How many top regions to list (and outline).")]

# One frame of a multi-frame DICOM upload, on every route that takes an image.
FrameQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=2**31 - 1,
        description="For a multi-frame DICOM file: the 0-based index of the frame to classify (required when the "
        "file holds more than one frame). Other images have one frame: leave it out (or 0).",
    ),
]
