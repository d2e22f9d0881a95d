"""``python -m services.inference``: the inference service under uvicorn, on the host and port of its settings."""

from services.inference.config import Settings
from shared.kit.service import service_main

if __name__ == "__main__":
    service_main("inference", Settings)
