"""HTTP routes of the gateway, one module per resource.

To add a resource, add a module with a ``router`` and list it here: ``/v1/explain`` belongs in
``explain.py``; the web page at ``/`` in ``web.py`` (serving ``services/gateway/static/``).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.routes import compare, health, models, predict

api_router = APIRouter()
for module in (health, models, predict, compare):
    api_router.include_router(module.router)

__all__ = ["api_router"]
