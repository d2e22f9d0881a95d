"""Time to first answer: `python -m benchmarks.first_answer [--retrain]`.

README command 1 after the install: `python -m deploy.stack up` on a fresh state folder and free loopback ports,
timed until it says the stack is up, then until the gateway's first `POST /v1/predict?model=cnn` and
`model=ensemble` answers for a sample slice; then `down`. Without `--retrain` the stack registers the repository's
pretrained bundle; with it, it trains the four families on the embedded sample instead (the demonstration).
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import httpx

from benchmarks.markdown import command_line, write_section
from deploy.processes import PROJECT_ROOT, free_port
from deploy.stack import DEFAULT_PORTS
from shared.core.dataset import SAMPLE_DATA_DIR


def _first_answer(gateway: str, model: str, image: bytes) -> tuple[float, dict]:
    started = time.perf_counter()
    response = httpx.post(f"{gateway}/v1/predict", params={"model": model}, files={"file": ("a.jpg", image)},
                          timeout=120, trust_env=False)  # fmt: skip
    response.raise_for_status()
    return time.perf_counter() - started, response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true", help="train on the sample instead of the bundle")
    args = parser.parse_args(argv)
    ports = {name: free_port() for name in DEFAULT_PORTS}
    image = sorted((SAMPLE_DATA_DIR / "glioma").glob("*.jpg"))[0].read_bytes()
    with tempfile.TemporaryDirectory(prefix="first-answer-") as state:
        env = {
            **os.environ,
            **{f"BT_{name.upper()}_PORT": str(port) for name, port in ports.items()},
            "BT_STATE_DIR": state,
        }
        command = [sys.executable, "-m", "deploy.stack", "up", *(["--retrain"] if args.retrain else [])]
        started = time.perf_counter()
        try:
            up = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1800)
            up_seconds = time.perf_counter() - started
            if up.returncode != 0:
                print(up.stdout[-3000:], up.stderr[-3000:], file=sys.stderr)
                return 1
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            cnn_seconds, cnn = _first_answer(gateway, "cnn", image)
            ensemble_seconds, ensemble = _first_answer(gateway, "ensemble", image)
            total = time.perf_counter() - started
        finally:
            subprocess.run([sys.executable, "-m", "deploy.stack", "down"], cwd=PROJECT_ROOT, env=env, timeout=120)
    source = "trained on the embedded sample (--retrain)" if args.retrain else "the pretrained bundle"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""## Time to first answer (`{command_line("benchmarks.first_answer", argv)}`)

{when} on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()}), Python {platform.python_version()};
one run, machine possibly shared; the install (`deploy/up.sh`'s pip step) is not counted. Models: {source}.

| step | seconds |
|---|---:|
| `python -m deploy.stack up` until "The stack is up" | {up_seconds:.1f} |
| first `POST /v1/predict?model=cnn` (answered `{cnn["label"]}`) | {cnn_seconds:.2f} |
| first `POST /v1/predict?model=ensemble` (answered `{ensemble["label"]}`) | {ensemble_seconds:.2f} |
| **from the command to the first two answers** | **{total:.1f}** |
"""
    print(body)
    write_section("first-answer-retrain" if args.retrain else "first-answer", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
