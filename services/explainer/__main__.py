"""``python -m services.explainer``: the explainer under uvicorn, on the host and port of its settings."""

from services.explainer.config import Settings
from shared.service import run_service

settings = Settings()
run_service("services.explainer.main:create_app", settings.host, settings.port)
