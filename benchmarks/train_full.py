"""Full-data training benchmark: `python -m benchmarks.train_full --data PATH [--search quick]`.

Runs the training command (search, refit, evaluation, ONNX, registration of the four families) in a
child process, measures its wall time and peak memory, prints the comparison table with the targets
beside it, and writes both to docs/benchmarks.md. Uses MLFLOW_TRACKING_URI when set, otherwise starts
a temporary MLflow server under var/benchmark/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.markdown import command_line, write_section
from deploy.processes import free_port, start_mlflow
from shared.kit.schemas import MODEL_FAMILIES

# The project's accuracy target per family (a family without one is reported without a verdict).
TARGETS = {"rf": 0.93, "snn": 0.85, "cnn": 0.97, "mobilenetv2": 0.95}
TIME_TARGET_MIN, MEMORY_TARGET_GB = 30.0, 8.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--search", default="quick", choices=["none", "quick", "seed"])
    parser.add_argument("--families", default=",".join(MODEL_FAMILIES))
    parser.add_argument("--state-dir", type=Path, default=Path("var/benchmark"))
    parser.add_argument("--report-dir", type=Path, default=Path("reports"))
    args, extra = parser.parse_known_args(argv)

    mlflow = None
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        mlflow = start_mlflow(args.state_dir / "mlflow", free_port(), args.state_dir / "mlflow.log")
        tracking_uri = mlflow.url
    command = [
        sys.executable, "-m", "services.training.cli", "--data", str(args.data), "--search", args.search,
        "--families", args.families, "--report-dir", str(args.report_dir), "--json", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    lines: list[str] = []
    try:
        with subprocess.Popen(
            command,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "BT_TRAINING_TRACKING_URI": tracking_uri},
            stdout=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:  # progress lines are shown as they come
                lines.append(line)
                if line.startswith("["):
                    print(line, end="", flush=True)
        returncode = process.returncode
    finally:
        if mlflow is not None:
            mlflow.stop()
    minutes = (time.perf_counter() - started) / 60
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    output = "".join(lines)
    families = json.loads(output[output.index("[\n") :]) if "[\n" in output else []

    rows = []
    for family in families:
        accuracy = family["metrics"].get("test_accuracy")
        target = TARGETS.get(family["family"])
        if accuracy is None or target is None:
            verdict = "-"
        else:
            verdict = "met" if accuracy >= target else f"missed by {target - accuracy:.3f}"
        rows.append(
            f"| {family['family']} | {accuracy if accuracy is None else f'{accuracy:.4f}'} | "
            f"{family['metrics'].get('test_f1_macro', float('nan')):.4f} | "
            f"{family['metrics'].get('cv_mean_val_accuracy', float('nan')):.4f} | "
            f"{'-' if target is None else f'{target:.2f}'} | {verdict} | "
            f"{family['state']} | {family.get('registered_version') or '-'} |"
        )
    table = "\n".join(
        [
            "| family | test accuracy | macro F1 | CV accuracy | target | verdict | state | version |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    body = f"""## Full-data training (`{command_line("benchmarks.train_full", argv)}`)

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()},
Python {platform.python_version()}); one run, machine possibly shared.

{table}

Whole run: **{minutes:.1f} minutes** (target {TIME_TARGET_MIN:.0f}); peak memory of the training process:
**{peak_gb:.2f} GB** (target < {MEMORY_TARGET_GB:.0f}). Per-family search and refit minutes, ONNX latency and
size: `{args.report_dir}/comparison.md`.
"""
    print(body)
    write_section("train-full", body)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
