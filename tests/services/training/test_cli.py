"""The command line: `python -m services.training.cli` (bt-train) in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deploy.processes import ManagedProcess

ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.training.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_seed_search_is_accepted_with_max_trials(training_mlflow: ManagedProcess, tmp_path: Path) -> None:
    result = run_cli(
        "--search", "seed", "--max-trials", "1", "--families", "rf", "--image-size", "32",
        "--cache-dir", str(tmp_path / "cache"), "--report-dir", str(tmp_path / "reports"), "--json",
        env={"MLFLOW_TRACKING_URI": training_mlflow.url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rf           done" in result.stdout
    families = json.loads(result.stdout[result.stdout.index("[\n") :])
    assert families[0]["state"] == "done" and families[0]["registered_version"]
    assert (tmp_path / "reports" / "comparison.md").exists()


def test_bad_folder_exits_2_with_a_message(training_mlflow: ManagedProcess, tmp_path: Path) -> None:
    result = run_cli("--data", str(tmp_path / "missing"), env={"MLFLOW_TRACKING_URI": training_mlflow.url})
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_mlflow_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("--families", "rf", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "not reachable" in result.stderr and "Traceback" not in result.stderr


def test_override_no_chosen_family_reads_exits_2_before_any_work() -> None:
    # An unreachable MLflow proves the options were refused first.
    result = run_cli("--families", "rf", "--set", "max_feature=0.2", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "max_feature" in result.stderr and "max_features" in result.stderr and "Traceback" not in result.stderr
