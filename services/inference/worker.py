"""The module each inference worker process imports for its app: the libraries the service never uses are kept
out (``lean``) before the app's modules import MLflow."""

from services.inference.lean import keep_unused_libraries_out

keep_unused_libraries_out()

from services.inference.main import create_app  # noqa: E402

__all__ = ["create_app"]
