"""FastAPI dependencies of the gateway: settings, the upstream clients, the request id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.config import Settings
from services.gateway.upstream import ExplainerClient, InferenceClient
from shared.kit.service import get_settings


def get_inference(request: Request) -> InferenceClient:
    return request.app.state.inference


def get_explainer(request: Request) -> ExplainerClient:
    return request.app.state.explainer


SettingsDep = Annotated[Settings, Depends(get_settings)]
InferenceDep = Annotated[InferenceClient, Depends(get_inference)]
ExplainerDep = Annotated[ExplainerClient, Depends(get_explainer)]
