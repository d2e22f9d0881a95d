"""``python -m services.inference``: the inference under uvicorn, on the host and port of its settings."""

from services.inference.config import Settings
from shared.service import run_service

settings = Settings()
run_service("services.inference.main:create_app", settings.host, settings.port)
