"""``python -m services.gateway``: run the gateway with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from services.gateway.config import Settings
from services.gateway.main import create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
