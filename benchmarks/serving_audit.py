"""The audit trail's cost on the gateway's latency: `python -m benchmarks.serving --audit-only` (and part of a full
`python -m benchmarks.serving` run).

Two gateway processes in front of one inference process, the same in every way but ``BT_GATEWAY_AUDIT``: one keeps
its trail (a SQLite file, WAL, synchronous=FULL, written by its background thread), the other none. They take the
same bounded load at concurrency 1 in rounds of one pair each, the order alternating (on-off, off-on, ...), so
drift of the machine (the other work on it) falls on both alike; the cost is the median over the pairs of the p50
difference, target at most 1 ms (issue 26). Beside it, in this process and without HTTP, the time the request path
spends on the trail (reading inference's answer, hashing the file's part of the upload, making the record, handing
it to the writer thread) over many requests: the same cost without the machine's noise.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.serving_load import LoadSpec, measure
from deploy.processes import ManagedProcess, free_port, start_service

ROUNDS = 10
REQUESTS_PER_ROUND = 150
SECONDS_PER_ROUND = 10.0
IN_PROCESS_REQUESTS = 3000
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
    for number in range(rounds):
        for name in ("on", "off") if number % 2 == 0 else ("off", "on"):
            url = f"{gateways[name].url}/v1/predict?model={model}"
            points[name].append(measure(LoadSpec(url, body[0], body[1], 1, REQUESTS_PER_ROUND, SECONDS_PER_ROUND)))
            print(f"  audit {name}: p50 {points[name][-1]['p50_ms']:.2f} ms", flush=True)
    time.sleep(1.0)  # the last records reach the file
    p50 = {name: statistics.median(point["p50_ms"] for point in got) for name, got in points.items()}
    differences = [on["p50_ms"] - off["p50_ms"] for on, off in zip(points["on"], points["off"], strict=True)]
    p99 = {name: statistics.median(point["p99_ms"] for point in got) for name, got in points.items()}
    return {
        "rounds": rounds,
        "requests_per_round": REQUESTS_PER_ROUND,
        "p50_ms": p50,
        "p99_ms": p99,
        "rounds_p50_ms": {name: [round(point["p50_ms"], 3) for point in got] for name, got in points.items()},
        "errors": {name: sum(point["errors"] or 0 for point in got) for name, got in points.items()},
        "pair_differences_ms": [round(value, 3) for value in differences],
        "cost_ms": statistics.median(differences),
        "request_path_us": request_path_cost_us(body, state_dir / "audit" / "in-process.sqlite"),
        "ratio": p50["on"] / p50["off"] if p50["off"] else None,
        "trail_bytes": trail.stat().st_size + sum(p.stat().st_size for p in trail.parent.glob("trail.sqlite-*")),
    }


def request_path_cost_us(body: tuple[Path, str], trail: Path) -> float:
    """Microseconds per request the gateway's request path spends on the trail (what runs on the event loop)."""
    import asyncio

    from services.gateway.auditing import record_prediction
    from services.gateway.forwarding import ForwardedBody
    from shared.kit.audit.requests import Auditor
    from shared.kit.audit.trail import AuditTrail

    answer = json.dumps({"model": "cnn", "version": "1", "label": "glioma", "latency_ms": 3.1,
                         "probabilities": {"glioma": 0.91, "meningioma": 0.05, "notumor": 0.02, "pituitary": 0.02},
                         "ood": {"score": 0.2, "threshold": 1.0, "flag": False, "unusual": False,
                                 "guard_version": "1"}}).encode()  # fmt: skip
    upload = ForwardedBody(body[0].read_bytes(), body[1])
    trail.unlink(missing_ok=True)
    writer = AuditTrail(f"sqlite:///{trail}", 183)
    writer.start()
    auditor = Auditor(writer, "anonymous", "/v1/predict", "bench")

    async def requests() -> float:
        started = time.perf_counter()
        for _ in range(IN_PROCESS_REQUESTS):
            await record_prediction(auditor, answer, upload)
        return time.perf_counter() - started

    elapsed = asyncio.run(requests())
    writer.close()
    return elapsed / IN_PROCESS_REQUESTS * 1e6


def render_audit(result: dict[str, Any], command: str, load: tuple[float, float, float]) -> str:
    on, off = result["p50_ms"]["on"], result["p50_ms"]["off"]
    verdict = "met" if result["cost_ms"] <= TARGET_MS else "missed"
    lines = [
        f"## The audit trail's cost on the gateway (`{command}`)",
        "",
        f"`/v1/predict?model=cnn` through two gateway processes (one worker each) in front of one inference process, "
        f"at concurrency 1, {result['rounds']} rounds of one pair (order alternating) of at most "
        f"{result['requests_per_round']} requests each; the trail is a SQLite file (WAL, synchronous=FULL) written by "
        "the gateway's background thread. "
        f"Load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start (a training run shares the machine).",
        "",
        "| gateway | p50 ms (median of rounds) | p99 ms | p50 of each round | non-2xx |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label in (("on", "trail on (`BT_GATEWAY_AUDIT=true`, default)"), ("off", "trail off")):
        rounds = ", ".join(f"{value:.2f}" for value in result["rounds_p50_ms"][name])
        lines.append(f"| {label} | {result['p50_ms'][name]:.2f} | {result['p99_ms'][name]:.2f} | {rounds} | "
                     f"{result['errors'][name]} |")  # fmt: skip
    pairs = ", ".join(f"{value:+.2f}" for value in result["pair_differences_ms"])
    lines += [
        "",
        f"Cost of the trail on p50, the median of the pairs' differences ({pairs} ms): "
        f"**{result['cost_ms']:+.2f} ms** (medians of the rounds: on / off = {on / off:.3f}); target at most "
        f"{TARGET_MS:.0f} ms: {verdict}. The request path's own work for the trail (in process, "
        f"{IN_PROCESS_REQUESTS} requests: read the answer, hash the upload's file part, make the record, queue it): "
        f"**{result['request_path_us']:.0f} µs** per request. The trail file held "
        f"{result['trail_bytes'] / 1024:.0f} KiB after the run.",
    ]
    return "\n".join(lines)
