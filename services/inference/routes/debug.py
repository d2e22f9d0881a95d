"""Diagnostics, mounted only when ``BT_INFERENCE_DEBUG_ENDPOINTS`` is set."""

from __future__ import annotations

import sys

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(prefix="/debug", tags=["debug"], include_in_schema=False)


class ModulesOut(BaseModel):
    modules: list[str]


@router.get("/modules", response_model=ModulesOut)
async def list_modules() -> ModulesOut:
    """Top-level modules imported in this process: lets a test prove no training stack is loaded."""
    # A name mapped to None is one the process refuses to import (services/inference/lean.py), not a module.
    loaded = {name.partition(".")[0] for name, module in list(sys.modules.items()) if module is not None}
    return ModulesOut(modules=sorted(loaded))
