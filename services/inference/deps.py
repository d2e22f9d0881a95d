"""FastAPI dependencies: settings, the registry, the requested model and the uploaded image."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, Path, Query, Request, UploadFile

from services.inference.config import Settings
from services.inference.model import OnnxClassifier
from services.inference.registry import ModelRegistry
from shared.uploads import read_upload

# Names and versions end up in MLflow filters and cache paths: keep them to a safe alphabet.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]

ModelName = Annotated[
    str, Path(pattern=MODEL_NAME_PATTERN, description="Short model name: rf, snn, cnn or mobilenetv2.")
]
VersionSpec = Annotated[
    str | None,
    Query(
        pattern=VERSION_PATTERN,
        description="Version number, alias (e.g. champion) or `latest`; "
        "default: the `champion` alias if set, else the latest version.",
    ),
]


def get_model_or_404(registry: RegistryDep, model: ModelName, version: VersionSpec = None) -> OnnxClassifier:
    """The loaded classifier, or 404 naming the models and versions that exist.

    A plain ``def``: FastAPI runs it in a worker thread, since a first use downloads and loads.
    """
    return registry.get(model, version)


ModelDep = Annotated[OnnxClassifier, Depends(get_model_or_404)]


async def get_image_bytes(
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The MRI image (JPEG, PNG, BMP, TIFF...).")],
) -> bytes:
    """The uploaded file's bytes, 413 beyond the configured size."""
    try:
        return await read_upload(file, settings.max_upload_bytes)
    finally:
        await file.close()


ImageBytes = Annotated[bytes, Depends(get_image_bytes)]
