"""Load generator of the serving benchmark, run in a process of its own so that it never shares an event loop
(or a GIL) with the servers it measures: `python -m benchmarks.serving_load --url URL --body FILE ...`.

A small httpx asyncio client: `concurrency` workers, each on a kept-alive connection, send the same request
back to back after a short warm-up, until `requests` answers or `seconds` have passed, whichever comes first.
Prints one JSON object: latency percentiles, throughput, non-2xx answers and the client's own CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from deploy.processes import PROJECT_ROOT


@dataclass(frozen=True)
class LoadSpec:
    """One load point: where, what, how hard and for how long at most."""

    url: str
    body: Path  # the exact request body: a multipart form or a JSON document, written once by the caller
    content_type: str
    concurrency: int
    requests: int
    seconds: float
    warmup: int = 3


async def _worker(client: httpx.AsyncClient, spec: LoadSpec, body: bytes, deadline: float, out: dict[str, Any]) -> None:
    headers = {"content-type": spec.content_type}
    while out["sent"] < spec.requests and time.perf_counter() < deadline:
        out["sent"] += 1
        started = time.perf_counter()
        try:
            response = await client.post(spec.url, content=body, headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        out["latencies"].append(time.perf_counter() - started)
        if status != 200:
            out["errors"][str(status)] = out["errors"].get(str(status), 0) + 1


async def run(spec: LoadSpec) -> dict[str, Any]:
    body = spec.body.read_bytes()
    # Expire idle connections well before the servers' keep-alive timeouts (uvicorn: 5 s), so that a connection
    # left idle between the warm-up and the run is never reused just as the server closes it.
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(60.0, connect=5.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        # Open every connection and warm the path (first-use loading) before the clock starts.
        warm: dict[str, Any] = {"sent": 0, "latencies": [], "errors": {}}
        warm_spec = LoadSpec(**{**spec.__dict__, "requests": spec.warmup * spec.concurrency})
        far = time.perf_counter() + 120
        await asyncio.gather(*(_worker(client, warm_spec, body, far, warm) for _ in range(spec.concurrency)))
        out: dict[str, Any] = {"sent": 0, "latencies": [], "errors": {}}
        cpu_started, started = time.process_time(), time.perf_counter()
        deadline = started + spec.seconds
        await asyncio.gather(*(_worker(client, spec, body, deadline, out) for _ in range(spec.concurrency)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    latencies_ms = np.asarray(out["latencies"]) * 1000.0
    return {
        "url": spec.url,
        "concurrency": spec.concurrency,
        "requests": len(latencies_ms),
        "seconds": round(elapsed, 3),
        "rps": len(latencies_ms) / elapsed if elapsed else 0.0,
        "p50_ms": float(np.percentile(latencies_ms, 50)) if len(latencies_ms) else None,
        "p99_ms": float(np.percentile(latencies_ms, 99)) if len(latencies_ms) else None,
        "errors": out["errors"],
        "warmup_requests": len(warm["latencies"]),
        "warmup_errors": warm["errors"],
        "client_cpu_s": round(cpu, 3),
    }


def measure(spec: LoadSpec) -> dict[str, Any]:
    """Run one load point in a separate Python process and return what it measured."""
    command = [
        sys.executable, "-m", "benchmarks.serving_load", "--url", spec.url, "--body", str(spec.body),
        "--content-type", spec.content_type, "--concurrency", str(spec.concurrency),
        "--requests", str(spec.requests), "--seconds", str(spec.seconds), "--warmup", str(spec.warmup),
    ]  # fmt: skip
    # The worst case (every request timing out) is bounded too.
    limit = spec.seconds + 60.0 * (spec.warmup + 2)
    env = {**os.environ, "NO_PROXY": "*"}
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=limit, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed for {spec.url}:\n{result.stderr[-2000:]}")
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    spec = LoadSpec(args.url, args.body, args.content_type, args.concurrency, args.requests, args.seconds, args.warmup)
    print(json.dumps(asyncio.run(run(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
