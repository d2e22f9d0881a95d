"""HTTP routes of the inference service, one router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from services.inference.routes import compare, debug, health, models, oip, ood

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(compare.router)
api_router.include_router(oip.router)
api_router.include_router(ood.router)

debug_router = debug.router

__all__ = ["api_router", "debug_router"]
