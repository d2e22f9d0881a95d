"""The web page at ``/`` (static files from ``services/gateway/static/``) and the settings it reads."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from services.gateway.deps import SettingsDep
from shared.core.contract import CLASS_NAMES
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import MODEL_FAMILIES

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# Only these files are served: no directory listing, no path from the URL touches the disk.
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "study.js": "text/javascript; charset=utf-8",
}
# The page is small and changes with the code: always revalidate, never a stale script.
NO_CACHE = {"cache-control": "no-cache"}


class ConfigOut(BaseModel):
    """What the web page needs to know about this deployment."""

    mlflow_ui_url: str = Field(description="The MLflow UI, linked from the page.")
    docs_url: str = Field(description="The API's interactive documentation.")
    max_upload_bytes: int = Field(description="Largest image file the API accepts.")
    models: list[str] = Field(description="The model families the page shows side by side.")
    class_names: list[str] = Field(description="The classes, in the models' output order.")


@router.get("/", include_in_schema=False)
async def read_index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=NO_CACHE)


@router.get("/study", include_in_schema=False)
async def read_study_page() -> FileResponse:
    """A study by UID from the configured PACS (docs/hospital.md): every slice's answer and the summary."""
    return FileResponse(STATIC_DIR / "study.html", media_type="text/html; charset=utf-8", headers=NO_CACHE)


@router.get("/static/{name}", include_in_schema=False)
async def read_static(name: str) -> FileResponse:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ServiceError(ErrorCode.NOT_FOUND, f"No static file {name!r}.")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=NO_CACHE)


@router.get("/v1/config", response_model=ConfigOut, tags=["models"], summary="Settings the web page reads")
async def read_config(settings: SettingsDep) -> ConfigOut:
    return ConfigOut(
        mlflow_ui_url=settings.mlflow_ui_url,
        docs_url="/docs",
        max_upload_bytes=settings.max_upload_bytes,
        models=list(MODEL_FAMILIES),
        class_names=list(CLASS_NAMES),
    )
