"""``python -m services.explainer``: the explainer under uvicorn, on the host and port of its settings."""

from services.explainer.config import Settings
from shared.kit.service import service_main

if __name__ == "__main__":
    service_main("explainer", Settings)
