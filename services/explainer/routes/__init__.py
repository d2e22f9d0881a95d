"""HTTP routes of the explainer service, one router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from services.explainer.routes import explain, health

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(explain.router)

__all__ = ["api_router"]
