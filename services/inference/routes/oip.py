"""The Open Inference Protocol (KServe V2) over REST: health, metadata and infer under ``/v2``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
