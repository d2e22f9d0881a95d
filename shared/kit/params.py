"""Query parameters that more than one service takes: model and version names, and the explanation
parameters the gateway forwards to the explainer unchanged; and the text no request may hold."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Query

from shared.core.masking import Fill
from shared.kit.schemas import CHAMPION_ALIAS, LATEST_VERSION, MODEL_FAMILIES, ExplainMethod

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
MethodQuery = Annotated[
    ExplainMethod | None,
    Query(
        description="occlusion: a patch slides over the head, on a grid and on it shifted by half a cell; the "
        "regions are quarter-cell tiles (deterministic, a copy per position); "
        "lime: SLIC superpixels inside the head, random subsets hidden, a weighted linear fit (seeded, "
        "`num_samples` copies). Default: the explainer's setting (occlusion unless configured)."
    ),
]
FILL_DESCRIPTION = (
    "What a hidden region becomes: grey (the head's mean), blur (the head blurred within itself: edges and texture "
    "go, brightness stays) or black."
)
FillQuery = Annotated[
    Fill | None,
    Query(description=f"{FILL_DESCRIPTION} Default: the explainer's setting (grey unless configured)."),
]
SeedQuery = Annotated[
    int,
    Query(ge=0, le=2**32 - 1, description="Seed of LIME's sampling; same seed, same answer. Occlusion draws nothing."),
]
RegionsQuery = Annotated[
    int, Query(ge=1, le=50, description="How many supporting and how many opposing regions to list (and outline).")
]

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


# Text no parameter, path or option holds: NUL and the other C0 controls (tab, line feed and carriage return
# aside), DEL, and unpaired UTF-16 surrogates (JSON can carry them; no file system or log can take them).
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def refuse_unsafe_text(value: Any) -> Any:
    """``value`` unchanged when no string in it (at any depth of lists and mappings) holds unsafe text; else a
    ValueError, which a pydantic validator turns into the request's 422."""
    if isinstance(value, str) and _UNSAFE_TEXT.search(value):
        raise ValueError("text must not hold NUL bytes, control characters or unpaired surrogates")
    if isinstance(value, dict):
        for key, item in value.items():
            refuse_unsafe_text(key)
            refuse_unsafe_text(item)
    elif isinstance(value, list | tuple):
        for item in value:
            refuse_unsafe_text(item)
    return value
