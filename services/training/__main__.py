"""``python -m services.training``: the training service under uvicorn (the CLI is ``bt-train``)."""

from services.training.config import TrainingSettings
from shared.service import run_service

settings = TrainingSettings()
run_service("services.training.main:create_app", settings.host, settings.port)
