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
    """Sample ``pid`` (and its threads) for ``seconds`` into collapsed stacks (one `a;b;c count` a line)."""
    command = [
        py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
        "--format", "raw", "--output", str(output), "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _label(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()[:80]
    file = match["file"]
    # Name the package a frame comes from, not the whole path: site-packages/<pkg>/..., else the file.
    parts = Path(file).parts
    if "site-packages" in parts:
        package = parts[parts.index("site-packages") + 1 :]
        where = "/".join(package[:2])
    else:
        where = "/".join(parts[-2:])
    return f"{match['function']} ({where})"


def summarise(collapsed: Path, top: int = 8) -> tuple[int, list[tuple[str, float]]]:
    """Samples in total and the ``top`` frames by self time (the innermost frame of each sample), as shares."""
    counts: Counter[str] = Counter()
    total = 0
    if not collapsed.exists():
        return 0, []
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        counts[_label(frames[-1])] += int(count)
        total += int(count)
    return total, [(label, count / total) for label, count in counts.most_common(top)] if total else []
