"""``python -m services.inference``: run the inference service with uvicorn."""

from services.inference.config import Settings
from services.inference.main import create_app
from shared.service import run_service


def main() -> None:
    run_service(create_app, Settings())


if __name__ == "__main__":
    main()
