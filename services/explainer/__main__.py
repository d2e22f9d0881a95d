"""``python -m services.explainer``: run the explainer service with uvicorn."""

from services.explainer.config import Settings
from services.explainer.main import create_app
from shared.service import run_service


def main() -> None:
    run_service(create_app, Settings())


if __name__ == "__main__":
    main()
