"""Where the time goes in a served request: py-spy samples running processes while a load runs.

py-spy is a standalone sampling profiler (a binary in its PyPI wheel) that reads a process from outside,
so the services run unmodified. The benchmark installs it into MLServer's environment (it imports nothing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def find_py_spy(extra_bin: Path | None) -> str | None:
    candidates = [shutil.which("py-spy")]
    if extra_bin is not None:
        candidates.append(str(extra_bin / "py-spy"))
    return next((path for path in candidates if path and Path(path).exists()), None)


def start_recording(py_spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Sample ``pid``, its threads and its worker processes for ``seconds`` into collapsed stacks (one
    `a;b;c count` a line)."""
    command = [
        py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
        "--format", "raw", "--output", str(output), "--nonblocking", "--idle", "--subprocesses",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _label(frame: str) -> str:
    """``function (package/file.py)``: the package a frame comes from, not its whole path."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    parts = Path(match["file"]).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return f"{match['function']} ({'/'.join(parts[-3:])})"


def category(frames: list[str]) -> str | None:
    """What a sampled stack is doing: the category of its innermost frame that has one (a wrapper such as a
    middleware must not claim what runs inside it); None for a thread that is only waiting for work."""
    leaf = frames[-1].split(" (")[0]
    # multiprocessing's resource tracker (beside uvicorn's workers) spends its life blocked on a pipe.
    if leaf.rsplit(".", 1)[-1] in IDLE_LEAVES or leaf in IDLE_FRAMES or "resource_tracker.py" in frames[-1]:
        return "waiting for a batch" if any("runner.py" in frame for frame in frames) else None
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other Python"


CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("onnxruntime run", ("onnxruntime/",)),
    ("image decoding and preprocessing", ("PIL/", "shared/core/imaging.py", "imaging.py")),
    ("waiting for a batch", ("runner.py",)),
    ("the guard against non-MRI input", ("guard_input.py", "inference/guard.py")),
    ("multipart parsing", ("multipart/",)),
    ("JSON and tensor (de)coding", ("json/", "oip_tensors.py", "oip_schemas.py", "orjson")),
    ("calling inference (aiohttp)", ("aiohttp/", "replica_http.py", "yarl/", "multidict/")),
    ("calling another service (httpx, httpcore)", ("httpx/", "httpcore/")),
    ("MLflow registry (catalogue refresh)", ("mlflow/", "urllib3/", "requests/")),
    ("Prometheus metrics", ("prometheus_client/", "shared/kit/metrics.py", "inference/metrics.py")),
    ("FastAPI, Starlette, pydantic", ("fastapi/", "starlette/", "pydantic/", "pydantic_core")),
    ("HTTP server (uvicorn, h11)", ("uvicorn/", "h11/")),
    ("event loop and worker threads (asyncio, uvloop, anyio)", ("asyncio/", "uvloop/", "anyio/", "threading.py")),
]
# Innermost frames of threads with nothing to do: the event loop's select (uvloop's run), idle pool workers,
# uvicorn's supervisor waiting on its workers' pipes.
IDLE_LEAVES = {"select", "wait", "poll", "get", "accept", "_worker", "sleep", "acquire"}
IDLE_FRAMES = {"Runner.run", "Connection._recv"}


def summarise(collapsed: Path) -> tuple[int, list[tuple[str, float]]]:
    """Busy samples (idle threads left out) and the share of them spent in each category, largest first."""
    counts: Counter[str] = Counter()
    if not collapsed.exists():
        return 0, []
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        name = category([_label(frame) for frame in stack.split(";")])
        if name is not None:
            counts[name] += int(count)
    total = sum(counts.values())
    return total, [(name, count / total) for name, count in counts.most_common()] if total else []
