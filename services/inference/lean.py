"""What the serving process keeps out of memory: libraries MLflow imports whenever they are installed (for dataset
logging and evaluation the service never does), which README command 1's `[train]` install brings along.

Blocked only in the process that serves (``python -m services.inference`` and its workers), before MLflow is
first imported: about 70 MB less per worker (docs/benchmarks.md). Code in the same environment that needs them
(training, tests) is another process and is not touched.
"""

from __future__ import annotations

import sys

UNUSED_BY_SERVING = ("pandas", "pyarrow", "scipy")


def keep_unused_libraries_out() -> None:
    """An import of any of them now fails at once (MLflow catches that and goes on without them)."""
    for name in UNUSED_BY_SERVING:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
