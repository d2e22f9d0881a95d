"""``python -m services.gateway``: the gateway under uvicorn, on the host and port of its settings."""

from services.gateway.config import Settings
from shared.service import run_service

settings = Settings()
run_service("services.gateway.main:create_app", settings.host, settings.port)
