"""The gateway under load and with a replica killed: `python -m benchmarks.gateway_load [--requests 2000]`.

Starts its own MLflow (state under --state-dir), registers the Random Forest (the fastest family) trained on the
embedded sample when the registry lacks it, then on 127.0.0.1:

1. load: `--requests` predictions (`model=rf`, the sample's images in turn) at `--concurrency` through a gateway
   in front of one inference replica, then of two; throughput, p50, p99 and every answer that was not a 200;
2. kill: a gateway in front of two replicas, a stream of `--kill-requests` predictions at concurrency 4, one
   replica SIGKILLed after a quarter of them; the requests answered without error, how long the gateway took to
   mark the replica down, and, once it is restarted on its port, to mark it up again.

Writes its section of docs/benchmarks.md. `predict_stream` is the load loop the tests use too
(tests/services/gateway/test_load.py and test_replicas.py): they assert its error count, never its timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.markdown import command_line, write_section
from deploy.processes import PROJECT_ROOT, ManagedProcess, free_port, start_mlflow, start_service
from shared.core.dataset import SAMPLE_DATA_DIR, discover
from shared.kit.schemas import registered_name

SECTION = "gateway-load"
MODEL = "rf"


@dataclass
class LoadResult:
    """What a stream of predictions got back: answers by status (or by exception name), latencies, wall time."""

    answers: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    # The first few answers that were not a 200, for the test's failure message.
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.answers.values())

    @property
    def errors(self) -> int:
        return self.sent - self.answers.get("200", 0)

    def figures(self) -> dict[str, float]:
        latencies_ms = np.asarray(self.latencies_s) * 1000.0
        return {
            "requests": self.sent,
            "errors": self.errors,
            "seconds": self.elapsed_s,
            "rps": self.sent / self.elapsed_s if self.elapsed_s else 0.0,
            "p50_ms": float(np.percentile(latencies_ms, 50)) if len(latencies_ms) else 0.0,
            "p99_ms": float(np.percentile(latencies_ms, 99)) if len(latencies_ms) else 0.0,
        }


def sample_images(count: int = 8) -> list[bytes]:
    """``count`` of the embedded sample's images, classes mixed."""
    paths = discover(SAMPLE_DATA_DIR).train.paths
    step = max(1, len(paths) // count)
    return [path.read_bytes() for path in paths[::step][:count]]


async def predict_stream(
    gateway_url: str,
    images: list[bytes],
    total: int,
    concurrency: int,
    *,
    model: str = MODEL,
    at_request: dict[int, Callable[[], None]] | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """``total`` predictions, ``concurrency`` at a time on kept-alive connections; ``at_request[n]`` is called
    (in the event loop, so it must be quick: a signal, not a restart) just before the n-th request is sent."""
    result = LoadResult()
    hooks = dict(at_request or {})
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    timeout = httpx.Timeout(timeout_s, connect=5.0)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total:
            number = sent
            sent += 1
            if number in hooks:
                hooks.pop(number)()
            files = {"file": ("scan.jpg", images[number % len(images)], "image/jpeg")}
            started = time.perf_counter()
            try:
                response = await client.post("/v1/predict", params={"model": model}, files=files)
                answer, text = str(response.status_code), response.text
            except httpx.HTTPError as exc:
                answer, text = type(exc).__name__, repr(exc)
            result.latencies_s.append(time.perf_counter() - started)
            result.answers[answer] += 1
            if answer != "200" and len(result.failures) < 5:
                result.failures.append(f"#{number}: {answer} {text[:300]}")

    async with httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=timeout, trust_env=False) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


def run_stream(gateway_url: str, images: list[bytes], total: int, concurrency: int, **options: Any) -> LoadResult:
    """``predict_stream`` from blocking code."""
    return asyncio.run(predict_stream(gateway_url, images, total, concurrency, **options))


def replica_up(gateway_url: str, replica_url: str) -> bool | None:
    """Whether the gateway's /readyz lists ``replica_url`` as up (None: the gateway did not answer)."""
    try:
        response = httpx.get(f"{gateway_url}/readyz", timeout=5.0, trust_env=False)
    except httpx.HTTPError:
        return None
    body = response.json()
    replicas = body.get("replicas") or body.get("error", {}).get("details", {}).get("replicas", [])
    return any(entry["url"] == replica_url and entry["up"] for entry in replicas)


def wait_for_replica(gateway_url: str, replica_url: str, up: bool, timeout_s: float = 60.0) -> float:
    """Seconds until the gateway's /readyz shows ``replica_url`` up (or down); TimeoutError past ``timeout_s``."""
    started = time.monotonic()
    while replica_up(gateway_url, replica_url) is not up:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the gateway did not see {replica_url} {'up' if up else 'down'} in {timeout_s:.0f}s")
        time.sleep(0.05)
    return time.monotonic() - started


def wait_ready(process: ManagedProcess, timeout_s: float = 120.0) -> None:
    """Until the service's /readyz answers 200 (inference: its default models are loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{process.url}/readyz", timeout=5.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} at {process.url} never became ready:\n{process.log_tail()}")
        time.sleep(0.2)


# -- the benchmark ---------------------------------------------------------------------------------


class Processes:
    """The processes this run started, stopped in reverse order whatever happens."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.started: list[ManagedProcess] = []

    def inference(self, env: dict[str, str], label: str, port: int | None = None) -> ManagedProcess:
        """A replica with its own model cache (``label`` names it), ready; a restart reuses its cache."""
        port = port or free_port()
        replica_env = {**env, "BT_INFERENCE_CACHE_DIR": str(self.state_dir / f"models-{label}")}
        process = start_service("inference", port, replica_env, self.logs / f"inference-{label}.log")
        self.started.append(process)
        wait_ready(process)
        return process

    def gateway(self, inference_urls: list[str], env: dict[str, str]) -> ManagedProcess:
        port = free_port()
        gateway_env = {**env, "BT_GATEWAY_INFERENCE_URLS": ",".join(inference_urls)}
        process = start_service("gateway", port, gateway_env, self.logs / f"gateway-{port}.log")
        self.started.append(process)
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop()
        self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)


def registry_env(tracking_uri: str, state_dir: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BT_TRAINING_TRACKING_URI": tracking_uri,
        "BT_INFERENCE_TRACKING_URI": tracking_uri,
        "BT_TRAINING_CACHE_DIR": str(state_dir / "cache"),
        "BT_TRAINING_REPORT_DIR": str(state_dir / "reports"),
    }


def register_rf(env: dict[str, str]) -> None:
    """Train and register rf on the embedded sample unless the registry has it."""
    from mlflow import MlflowClient

    # MLflow's own client: it authenticates with MLFLOW_TRACKING_USERNAME/PASSWORD when the server wants it.
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    if client.search_registered_models(filter_string=f"name = '{registered_name(MODEL)}'"):
        return
    print("training rf on the embedded sample ...", flush=True)
    command = [sys.executable, "-m", "services.training.cli", "--families", MODEL, "--search", "none"]
    subprocess.run(command, env={**os.environ, **env}, cwd=PROJECT_ROOT, check=True, timeout=1800)


def measure_load(
    processes: Processes, replicas: list[ManagedProcess], env: dict[str, str], requests: int, concurrency: int
) -> dict[str, float]:
    gateway = processes.gateway([replica.url for replica in replicas], env)
    try:
        images = sample_images()
        run_stream(gateway.url, images, concurrency * 4, concurrency)  # warm-up: connections, first runs
        figures = run_stream(gateway.url, images, requests, concurrency).figures()
    finally:
        processes.stop(gateway)
    print(f"load, {len(replicas)} replica(s): {figures}", flush=True)
    return figures


def measure_kill(processes: Processes, env: dict[str, str], requests: int) -> dict[str, float]:
    """Two replicas, one SIGKILLed a quarter into a stream at concurrency 4, then restarted on its port."""
    victim = processes.inference(env, "victim")
    survivor = processes.inference(env, "survivor")
    gateway = processes.gateway([victim.url, survivor.url], env)
    seen_down: dict[str, float] = {}

    def watch_for_down(killed_at: float) -> None:
        wait_for_replica(gateway.url, victim.url, up=False)
        seen_down["after_s"] = time.monotonic() - killed_at

    watcher = threading.Thread(target=lambda: None)

    def kill() -> None:
        nonlocal watcher
        os.killpg(victim.process.pid, signal.SIGKILL)
        # Polled beside the stream, from the kill on: the time the gateway takes to list the victim down.
        watcher = threading.Thread(target=watch_for_down, args=(time.monotonic(),), daemon=True)
        watcher.start()

    try:
        wait_for_replica(gateway.url, victim.url, up=True)
        stream = run_stream(gateway.url, sample_images(), requests, 4, at_request={requests // 4: kill})
        watcher.join(timeout=60)
        processes.stop(victim)
        port = int(victim.url.rsplit(":", 1)[1])
        restarted_at = time.monotonic()
        victim = processes.inference(env, "victim", port=port)
        ready_after = time.monotonic() - restarted_at
        seen_up_after = wait_for_replica(gateway.url, victim.url, up=True)
    finally:
        processes.stop(gateway)
    figures = {
        **{f"stream_{key}": value for key, value in stream.figures().items()},
        "down_seen_s": seen_down.get("after_s", float("nan")),
        "restart_ready_s": ready_after,
        "up_seen_s": seen_up_after,
    }
    print(f"kill: {figures}", flush=True)
    return figures


def render(command: str, loads: dict[int, dict[str, float]], kill: dict[str, float], settings: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {replicas} | {f['requests']:.0f} | {f['errors']:.0f} | {f['seconds']:.1f} | {f['rps']:.1f} | "
        f"{f['p50_ms']:.1f} | {f['p99_ms']:.1f} |"
        for replicas, f in loads.items()
    )
    answered = kill["stream_requests"] - kill["stream_errors"]
    return f"""## The gateway under load and with a replica killed (`{command}`)

{when}, {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other work
shares the machine: compare rows of one run, not runs). Gateway, inference replicas, MLflow and this client all on
127.0.0.1. `POST /v1/predict?model=rf` (the fastest family), the sample's images in turn, through a gateway process
({settings}).

| inference replicas | requests | errors | seconds | requests/s | p50 ms | p99 ms |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Kill: two replicas, {kill["stream_requests"]:.0f} predictions at concurrency 4, one replica SIGKILLed after a quarter
of them: **{answered:.0f} of {kill["stream_requests"]:.0f} answered 200** ({kill["stream_errors"]:.0f} errors: the
calls whose connection to the killed replica failed were sent again to the other), p50
{kill["stream_p50_ms"]:.1f} ms, p99 {kill["stream_p99_ms"]:.1f} ms. The gateway's `/readyz` listed the replica down
{kill["down_seen_s"]:.2f} s after the kill (the first failed connection marks it down, before any background
check). Restarted on its port, it was ready after {kill["restart_ready_s"]:.1f} s (process start and model loading)
and listed up again {kill["up_seen_s"]:.2f} s after that (the next background check of `/readyz`).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=PROJECT_ROOT / "var" / "benchmark-gateway")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-requests", type=int, default=400)
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    processes = Processes(state_dir)
    try:
        mlflow = start_mlflow(state_dir / "mlflow", free_port(), state_dir / "logs" / "mlflow.log")
        processes.started.append(mlflow)
        env = registry_env(mlflow.url, state_dir)
        register_rf(env)
        replicas = [processes.inference(env, "0")]
        loads = {1: measure_load(processes, replicas, env, args.requests, args.concurrency)}
        replicas.append(processes.inference(env, "1"))
        loads[2] = measure_load(processes, replicas, env, args.requests, args.concurrency)
        for replica in replicas:
            processes.stop(replica)
        kill = measure_kill(processes, env, args.kill_requests)
    finally:
        processes.stop_all()
    from services.gateway.config import Settings

    defaults = Settings()
    settings = (
        f"default settings: prediction timeout {defaults.predict_timeout_s:g} s, replica checks every "
        f"{defaults.health_check_interval_s:g} s, at most {defaults.max_connections} connections per replica"
    )
    section = render(command_line("benchmarks.gateway_load", argv), loads, kill, settings)
    print(section)
    if not args.no_write:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
