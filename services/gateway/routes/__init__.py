"""HTTP routes of the gateway, one module per resource; to add one, add a module with a ``router``
and list it here. ``web.py`` serves the page at ``/`` from ``services/gateway/static/``."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.routes import compare, explain, health, models, predict, studies, web

api_router = APIRouter()
for module in (health, models, predict, compare, explain, studies, web):
    api_router.include_router(module.router)

__all__ = ["api_router"]
