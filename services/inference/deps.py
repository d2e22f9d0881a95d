"""FastAPI dependencies: settings, the data plane, the requested model, a body of pixels and a masked upload."""

from __future__ import annotations

from typing import Annotated, NamedTuple

import numpy as np
from fastapi import Depends, File, Header, Path, Query, Request, UploadFile

from services.inference.config import MAX_REGIONS_PNG_BYTES, Settings
from services.inference.dataplane import DataPlane
from services.inference.masked import read_masks, too_many_copies
from services.inference.servable import Classifier
from shared.core.masking import DEFAULT_FILL, MAX_REGIONS, Fill, RegionMasks
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.params import FILL_DESCRIPTION, MODEL_DESCRIPTION, NAME_PATTERN, VersionQuery
from shared.kit.schemas import PIXELS_SHAPE_HEADER
from shared.kit.service import get_settings
from shared.kit.uploads import read_body, read_upload


def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def require_ready(request: Request) -> str:
    """The one readiness rule, for ``/readyz`` and the Open Inference Protocol's server-ready: MODEL_NOT_READY
    while the default models preload or while one of them cannot be loaded, REGISTRY_UNAVAILABLE when there
    is no catalogue at all. Ready while MLflow is down if the last catalogue and its verified files serve;
    returns the registry's state (``reachable`` or ``unreachable since <time>``). It may load a model or
    ask MLflow: routes that use it are plain ``def``s, so the wait is in a worker thread."""
    if not request.app.state.preload_done.is_set():
        raise ServiceError(ErrorCode.MODEL_NOT_READY, "The default models are still being loaded.")
    # Without preloading, the service was told not to load models before they are asked for.
    return get_dataplane(request).registry.readiness(require_defaults=request.app.state.settings.preload)


SettingsDep = Annotated[Settings, Depends(get_settings)]
# Every classification goes through it: decode, guard, preprocess, predict, postprocess.
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]

# The model is part of the path here; the version is a query parameter as on the gateway.
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description=MODEL_DESCRIPTION)]


def get_model_or_404(dataplane: DataPlaneDep, model: ModelName, version: VersionQuery = None) -> Classifier:
    """The loaded model, or 404 naming the models and versions that exist.

    A plain ``def``: FastAPI runs it in a worker thread, since a first use downloads and loads.
    """
    return dataplane.model(model, version)


ModelDep = Annotated[Classifier, Depends(get_model_or_404)]


async def get_pixel_batch(
    request: Request,
    settings: SettingsDep,
    shape: Annotated[
        str,
        Header(
            alias=PIXELS_SHAPE_HEADER,
            pattern=r"^\s*\d{1,9}\s*,\s*\d{1,9}\s*,\s*\d{1,9}\s*$",
            description="N,H,W of the uint8 pixels in the body, e.g. `500,128,128`.",
        ),
    ],
) -> np.ndarray:
    """The body as uint8 images (N, H, W): its length must be exactly N*H*W; N and the size are bounded."""
    count, height, width = (int(part) for part in shape.split(","))
    if not 1 <= count <= settings.max_pixel_batch_images or height < 1 or width < 1:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"{PIXELS_SHAPE_HEADER} must be N,H,W with 1 <= N <= {settings.max_pixel_batch_images} and H, W >= 1; "
            f"got {count},{height},{width}.",
        )
    expected = count * height * width
    limit = settings.max_pixel_batch_bytes
    if expected > limit:
        raise ServiceError(
            ErrorCode.FILE_TOO_LARGE,
            f"A batch of {count} images of {height}x{width} needs {expected} bytes; at most {limit} are accepted "
            "in one request: send fewer images per request.",
            {"max_bytes": limit},
        )
    body = await read_body(request, limit)
    if len(body) != expected:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"The body holds {len(body)} bytes; {PIXELS_SHAPE_HEADER} {count},{height},{width} needs exactly "
            f"{expected} (one uint8 per pixel, image after image, row by row).",
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(count, height, width)


PixelBatch = Annotated[np.ndarray, Depends(get_pixel_batch)]


FillQuery = Annotated[Fill, Query(description=FILL_DESCRIPTION)]


class MaskedUpload(NamedTuple):
    """A predict-masked request's upload and the masks to apply to it."""

    data: bytes
    masks: RegionMasks


async def get_masked_upload(
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The image exactly as sent to `/v1/predict` (any accepted format).")],
    regions: Annotated[
        UploadFile,
        File(
            description="The label map: an 8- or 16-bit grayscale PNG, at most 1024 px a side; 0 = never hidden, "
            "1..R = the regions (R at most 1024). It is resized to each model's input size by nearest neighbour."
        ),
    ],
    keep: Annotated[
        UploadFile,
        File(description="Which regions each copy keeps: R bytes per copy (1 keep, 0 hide), copy after copy."),
    ],
    fill: FillQuery = DEFAULT_FILL,
) -> MaskedUpload:
    """The three parts, each read within its own limit (the upload's, a label map's, ``max_masked_copies`` rows),
    and the masks they describe (INVALID_REQUEST when they do not fit)."""
    try:
        data = await read_upload(file, settings.max_upload_bytes)
        regions_too_large = ServiceError(
            ErrorCode.FILE_TOO_LARGE,
            f"regions is too large; a label map PNG of at most {MAX_REGIONS_PNG_BYTES} bytes is accepted.",
            {"max_bytes": MAX_REGIONS_PNG_BYTES},
        )
        regions_png = await read_upload(regions, MAX_REGIONS_PNG_BYTES, regions_too_large)
        max_copies = settings.max_masked_copies
        keep_data = await read_upload(keep, max_copies * MAX_REGIONS, too_many_copies(max_copies))
    finally:
        for part in (file, regions, keep):
            await part.close()
    masks = await dataplane.runner.work(read_masks, regions_png, keep_data, fill, max_copies)
    return MaskedUpload(data, masks)


MaskedUploadDep = Annotated[MaskedUpload, Depends(get_masked_upload)]
