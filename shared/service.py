"""What every service's `main.py` and `__main__.py` share: the lazily built module-level `app` that
`uvicorn services.<name>.main:app` asks for, and running an app under uvicorn."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI


class ServiceSettings(Protocol):
    host: str
    port: int


def lazy_app(module: str, create_app: Callable[[], FastAPI]) -> Callable[[str], FastAPI]:
    """A module `__getattr__` that builds `app` on first access, so importing a service's main
    module never reads the environment."""
    build = functools.cache(create_app)

    def __getattr__(name: str) -> FastAPI:
        if name == "app":
            return build()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def run_service(create_app: Callable[[Any], FastAPI], settings: ServiceSettings) -> None:
    """`python -m services.<name>`: the app under uvicorn on the configured host and port."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
