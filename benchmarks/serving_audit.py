"""The audit trail's cost on the gateway's latency: `python -m benchmarks.serving --audit-only` (and part of a full
`python -m benchmarks.serving` run).

Two gateway processes in front of one inference process, the same in every way but ``BT_GATEWAY_AUDIT``: one keeps
its trail (a SQLite file, WAL, synchronous=FULL, written by its background thread), the other none. They take the
same bounded load at concurrency 1 in alternating rounds (on, off, on, off...), so drift of the machine (the other
work on it) falls on both; the cost is the difference of the median p50s, target at most 1 ms (issue 26).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.serving_load import LoadSpec, measure
from deploy.processes import ManagedProcess, free_port, start_service

ROUNDS = 4
REQUESTS_PER_ROUND = 300
SECONDS_PER_ROUND = 15.0
TARGET_MS = 1.0
SECTION = "serving-audit"


def measure_audit_cost(
    add: Callable[[ManagedProcess], ManagedProcess],
    env: dict[str, str],
    inference_url: str,
    body: tuple[Path, str],
    model: str,
    state_dir: Path,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """p50 and p99 of ``/v1/predict`` through a gateway with the trail and one without, round after round."""
    trail = state_dir / "audit" / "trail.sqlite"
    trail.unlink(missing_ok=True)
    common = {**env, "BT_GATEWAY_INFERENCE_URL": inference_url, "BT_GATEWAY_WORKERS": "1"}
    settings = {"on": {"BT_GATEWAY_AUDIT": "true", "BT_GATEWAY_AUDIT_URI": f"sqlite:///{trail}"},
                "off": {"BT_GATEWAY_AUDIT": "false"}}  # fmt: skip
    logs = state_dir / "logs"
    gateways = {
        name: add(start_service("gateway", free_port(), {**common, **own}, logs / f"gateway-audit-{name}.log",
                                as_module=True))
        for name, own in settings.items()
    }  # fmt: skip
    points: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(rounds):
        for name, gateway in gateways.items():
            url = f"{gateway.url}/v1/predict?model={model}"
            points[name].append(measure(LoadSpec(url, body[0], body[1], 1, REQUESTS_PER_ROUND, SECONDS_PER_ROUND)))
            print(f"  audit {name}: p50 {points[name][-1]['p50_ms']:.2f} ms", flush=True)
    time.sleep(1.0)  # the last records reach the file
    p50 = {name: statistics.median(point["p50_ms"] for point in got) for name, got in points.items()}
    p99 = {name: statistics.median(point["p99_ms"] for point in got) for name, got in points.items()}
    return {
        "rounds": rounds,
        "requests_per_round": REQUESTS_PER_ROUND,
        "p50_ms": p50,
        "p99_ms": p99,
        "rounds_p50_ms": {name: [round(point["p50_ms"], 3) for point in got] for name, got in points.items()},
        "errors": {name: sum(point["errors"] or 0 for point in got) for name, got in points.items()},
        "cost_ms": p50["on"] - p50["off"],
        "ratio": p50["on"] / p50["off"] if p50["off"] else None,
        "trail_bytes": trail.stat().st_size + sum(p.stat().st_size for p in trail.parent.glob("trail.sqlite-*")),
    }


def render_audit(result: dict[str, Any], command: str, load: tuple[float, float, float]) -> str:
    on, off = result["p50_ms"]["on"], result["p50_ms"]["off"]
    verdict = "met" if result["cost_ms"] <= TARGET_MS else "missed"
    lines = [
        f"## The audit trail's cost on the gateway (`{command}`)",
        "",
        f"`/v1/predict?model=cnn` through two gateway processes (one worker each) in front of one inference process, "
        f"at concurrency 1, {result['rounds']} alternating rounds of at most {result['requests_per_round']} requests "
        "each; the trail is a SQLite file (WAL, synchronous=FULL) written by the gateway's background thread. "
        f"Load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start (a training run shares the machine).",
        "",
        "| gateway | p50 ms (median of rounds) | p99 ms | p50 of each round | non-2xx |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label in (("on", "trail on (`BT_GATEWAY_AUDIT=true`, default)"), ("off", "trail off")):
        rounds = ", ".join(f"{value:.2f}" for value in result["rounds_p50_ms"][name])
        lines.append(f"| {label} | {result['p50_ms'][name]:.2f} | {result['p99_ms'][name]:.2f} | {rounds} | "
                     f"{result['errors'][name]} |")  # fmt: skip
    lines += [
        "",
        f"Cost of the trail on p50: **{result['cost_ms']:+.2f} ms** (on / off = {on / off:.3f}); target at most "
        f"{TARGET_MS:.0f} ms: {verdict}. The trail file held {result['trail_bytes'] / 1024:.0f} KiB after the run.",
    ]
    return "\n".join(lines)
