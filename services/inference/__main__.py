"""``python -m services.inference``: the inference service under uvicorn, on the host and port of its settings.

Each worker process imports ``services.inference.worker`` for its app; a lone process keeps the same libraries out
here, before anything imports MLflow."""

from services.inference.lean import keep_unused_libraries_out

keep_unused_libraries_out()

from services.inference.config import Settings  # noqa: E402
from shared.kit.service import service_main  # noqa: E402

if __name__ == "__main__":
    service_main("inference", Settings, worker_module="services.inference.worker")
