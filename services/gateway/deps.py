"""FastAPI dependencies of the gateway: settings, the inference client, the request id, the upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from services.gateway.config import Settings
from services.gateway.upstream import REQUEST_ID_HEADER, ExplainerClient, InferenceClient

# Model names and versions go into upstream URLs: keep them to a safe alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_inference(request: Request) -> InferenceClient:
    return request.app.state.inference


def get_explainer(request: Request) -> ExplainerClient:
    return request.app.state.explainer


def get_request_id(request: Request) -> str:
    # RequestIdMiddleware guarantees the header, so upstream logs and our errors share the id.
    return request.headers.get(REQUEST_ID_HEADER, "")


SettingsDep = Annotated[Settings, Depends(get_settings)]
InferenceDep = Annotated[InferenceClient, Depends(get_inference)]
ExplainerDep = Annotated[ExplainerClient, Depends(get_explainer)]
RequestIdDep = Annotated[str, Depends(get_request_id)]

ModelQuery = Annotated[
    str,
    Query(pattern=NAME_PATTERN, description="Short model name: rf, snn, cnn or mobilenetv2.", examples=["cnn"]),
]
VersionQuery = Annotated[
    str | None,
    Query(
        pattern=NAME_PATTERN,
        description="Version number, alias (e.g. champion) or `latest`; "
        "default: the `champion` alias if set, else the latest version.",
    ),
]
