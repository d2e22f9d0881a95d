"""Training runs started over HTTP: one at a time, in a background thread, with live progress.

Prometheus series: runs started, runs finished by final state, and run duration by final state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

from prometheus_client import Counter, Histogram
from pydantic import BaseModel

from services.training.config import TrainingSettings
from services.training.options import FamilyProgress, FamilyState, Registration, TrainingOptions
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some families failed, the others were registered
    FAILED = "failed"


class TrainingRun(BaseModel):
    id: str
    state: RunState
    options: TrainingOptions
    created_at: datetime
    finished_at: datetime | None = None
    families: dict[str, FamilyProgress]
    # Every version the run registered (families, ensemble, guard), and whether champion moved to it.
    registrations: list[Registration] = []
    error: str | None = None


# Started and finished are separate series so that summing the finished ones over state counts each run once.
RUNS_STARTED = Counter("bt_training_runs_started", "Training runs started.")
RUNS_FINISHED = Counter("bt_training_runs_finished", "Training runs ended, by final state.", ["state"])
# From a quick test run (seconds) to a full grid search of the four families (hours).
RUN_SECONDS = Histogram(
    "bt_training_run_duration_seconds",
    "Time from a run's start to its end, by final state.",
    ["state"],
    buckets=(1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200),
)
for _final in (RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED):
    # Present at zero from the start, so a rate or increase over the first run is right.
    RUNS_FINISHED.labels(_final.value)
    RUN_SECONDS.labels(_final.value)

RunFunction = Callable[
    [TrainingOptions, TrainingSettings, Callable[[FamilyProgress | Registration], None]], list[FamilyProgress]
]


class TrainingRunManager:
    """Keeps every run of this process; refuses a second run while one is active."""

    def __init__(self, settings: TrainingSettings, run_function: RunFunction) -> None:
        self._settings = settings
        self._run_function = run_function
        self._runs: dict[str, TrainingRun] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, options: TrainingOptions) -> TrainingRun:
        with self._lock:
            active = [run for run in self._runs.values() if run.state in (RunState.QUEUED, RunState.RUNNING)]
            if active:
                raise ServiceError(
                    ErrorCode.TRAINING_BUSY,
                    f"Training run {active[0].id} is still {active[0].state.value}; one run at a time.",
                    {"active_run": active[0].id},
                )
            run = TrainingRun(
                id=uuid.uuid4().hex[:12],
                state=RunState.QUEUED,
                options=options,
                created_at=datetime.now(UTC),
                families={name: FamilyProgress(family=name) for name in options.families},
            )
            self._runs[run.id] = run
            self._thread = threading.Thread(target=self._execute, args=(run,), name=f"training-{run.id}", daemon=True)
            self._thread.start()
            RUNS_STARTED.inc()
            return run.model_copy(deep=True)

    def _execute(self, run: TrainingRun) -> None:
        def report(progress: FamilyProgress | Registration) -> None:
            with self._lock:
                if isinstance(progress, Registration):
                    run.registrations.append(progress.model_copy())
                else:
                    run.families[progress.family] = progress.model_copy(deep=True)

        with self._lock:
            run.state = RunState.RUNNING
        started = time.monotonic()
        try:
            results = self._run_function(run.options, self._settings, report)
            states = {result.state for result in results}
            final = (
                RunState.SUCCEEDED
                if states == {FamilyState.DONE}
                else (RunState.PARTIAL if FamilyState.DONE in states else RunState.FAILED)
            )
            error = (
                None if final is RunState.SUCCEEDED else "; ".join(f"{r.family}: {r.error}" for r in results if r.error)
            )
        except Exception as exc:  # reported on the run, never lost in a thread
            logger.exception("training run %s failed", run.id)
            final, error = RunState.FAILED, f"{type(exc).__name__}: {exc}"
        # Counted before the state changes, so whoever sees the run ended also sees it in the series.
        RUNS_FINISHED.labels(final.value).inc()
        RUN_SECONDS.labels(final.value).observe(time.monotonic() - started)
        with self._lock:
            run.state, run.error, run.finished_at = final, error, datetime.now(UTC)

    def get(self, run_id: str) -> TrainingRun:
        with self._lock:
            if run_id not in self._runs:
                raise ServiceError(ErrorCode.RUN_NOT_FOUND, f"No training run {run_id!r} in this service.")
            return self._runs[run_id].model_copy(deep=True)

    def list(self) -> list[TrainingRun]:
        with self._lock:
            return [run.model_copy(deep=True) for run in sorted(self._runs.values(), key=lambda r: r.created_at)]

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run's thread ends (used at shutdown and in tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
