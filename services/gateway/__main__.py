"""``python -m services.gateway``: run the gateway with uvicorn."""

from services.gateway.config import Settings
from services.gateway.main import create_app
from shared.service import run_service


def main() -> None:
    run_service(create_app, Settings())


if __name__ == "__main__":
    main()
