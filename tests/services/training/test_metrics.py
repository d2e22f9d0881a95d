"""The training service's ``/metrics``: runs started, runs finished by final state, and run duration.

The runs go through the service's own run seam (``run_function``) so that each final state can be
reached in a second; the pipeline itself is covered by test_api and test_pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from services.training.config import TrainingSettings
from services.training.main import create_app
from services.training.options import FamilyProgress, FamilyState, TrainingOptions
from tests.prometheus_samples import Samples, scrape

Report = Callable[[FamilyProgress], None]

STARTED = "bt_training_runs_started_total"
FINISHED = "bt_training_runs_finished_total"
SECONDS_COUNT = "bt_training_run_duration_seconds_count"
SECONDS_SUM = "bt_training_run_duration_seconds_sum"
RUN_SECONDS = 0.3


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def run_to_the_end(client: TestClient) -> str:
    response = client.post("/v1/training-runs", json={"families": ["rf", "snn"]})
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    client.app.state.manager.wait(30)
    return client.get(f"/v1/training-runs/{run_id}").json()["state"]


def run_ending(outcome: str) -> Callable[[TrainingOptions, TrainingSettings, Report], list[FamilyProgress]]:
    """A run that takes ``RUN_SECONDS`` and ends ``succeeded``, ``partial`` or ``failed`` (by raising)."""

    def run(options: TrainingOptions, settings: TrainingSettings, report: Report) -> list[FamilyProgress]:
        time.sleep(RUN_SECONDS)
        if outcome == "failed":
            raise RuntimeError("the data folder vanished")
        snn_state = FamilyState.DONE if outcome == "succeeded" else FamilyState.FAILED
        return [FamilyProgress(family="rf", state=FamilyState.DONE), FamilyProgress(family="snn", state=snn_state)]

    return run


def test_runs_are_counted_by_final_state_and_timed(tmp_path: Path, unused_url: str) -> None:
    settings = TrainingSettings(
        tracking_uri=unused_url, cache_dir=tmp_path / "cache", report_dir=tmp_path / "reports", api_token="metrics-test"
    )
    for outcome in ("succeeded", "partial", "failed"):
        app = create_app(settings, run_function=run_ending(outcome))
        auth = {"Authorization": "Bearer metrics-test"}
        with TestClient(app, base_url="http://127.0.0.1", headers=auth) as client:
            before = scrape(client)
            assert run_to_the_end(client) == outcome
            after = scrape(client)

        assert moved(before, after, STARTED) == 1
        for state in ("succeeded", "partial", "failed"):
            assert moved(before, after, FINISHED, state=state) == (1 if state == outcome else 0), state
            assert moved(before, after, SECONDS_COUNT, state=state) == (1 if state == outcome else 0), state
        assert moved(before, after, SECONDS_SUM, state=outcome) >= RUN_SECONDS
