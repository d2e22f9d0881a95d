"""The web page's files and settings, served by the gateway without any external resource."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.core.contract import CLASS_NAMES
from shared.kit.schemas import MODEL_FAMILIES


@pytest.fixture
def client(gateway_app_client: Any, unused_url: str) -> Any:
    # The page's files and settings need no upstream service at all.
    return gateway_app_client(inference_url=unused_url, mlflow_ui_url="http://mlflow.example:5000")


def test_index_is_the_page(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    for needle in ('src="/static/app.js"', 'href="/static/style.css"', 'id="file-input"', 'href="/docs"'):
        assert needle in response.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
def test_static_files(client: Any, name: str, media_type: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert len(response.content) > 100


@pytest.mark.parametrize("name", ["index.html.bak", "..%2Fconfig.py", "%2E%2E%2Fmain.py", "missing.js"])
def test_only_the_page_files_are_served(client: Any, name: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_nothing_is_loaded_from_elsewhere(client: Any) -> None:
    # Works offline: no CDN, no web font, no absolute URL in what the browser loads.
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).text
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path
        assert "@import" not in text and "@font-face" not in text


def test_config_tells_the_page_what_it_needs(client: Any) -> None:
    response = client.get("/v1/config")
    assert response.status_code == 200
    assert response.json() == {
        "mlflow_ui_url": "http://mlflow.example:5000",
        "docs_url": "/docs",
        "max_upload_bytes": 10 * 1024 * 1024,
        "models": list(MODEL_FAMILIES),
        "class_names": list(CLASS_NAMES),
    }
