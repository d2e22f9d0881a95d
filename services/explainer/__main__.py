"""``python -m services.explainer``: run the explainer service with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from services.explainer.config import Settings
from services.explainer.main import create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
