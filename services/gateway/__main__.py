"""``python -m services.gateway``: the gateway under uvicorn, on the host and port of its settings."""

from services.gateway.config import Settings
from shared.kit.service import service_main

if __name__ == "__main__":
    service_main("gateway", Settings)
