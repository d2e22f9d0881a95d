"""One image, several models: decoded once per contract size, every named model run on it."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["models"])
