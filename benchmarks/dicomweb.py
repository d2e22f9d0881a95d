"""A 24-slice MR series pulled, classified and stored, end to end: `python -m benchmarks.dicomweb [--runs 5]`.

`python -m deploy.stack up --pacs` on free loopback ports and a fresh state folder (the pretrained bundle, Orthanc
with its DICOMweb plugin beside it); a series of 24 slices written from the embedded sample (8-bit MR, one study)
stored into Orthanc over STOW-RS; then `POST /v1/studies/{study}/classify?model=ensemble` timed, once to warm up and
`--runs` times more. Each answer says where its time went (`timings_ms`: fetch, classify, report, store); the time
beyond the classification is the wall time minus `classify`. The gateway's peak memory (VmHWM of its processes) is
read from /proc. Then `down`. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.markdown import command_line, write_section
from deploy.processes import PROJECT_ROOT, free_port
from deploy.sample_series import series_files
from deploy.stack import DEFAULT_PORTS

SLICES = 24


def stow(dicomweb_url: str, auth: tuple[str, str], files: list[bytes]) -> None:
    boundary = "bench-part"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    answer = httpx.post(f"{dicomweb_url}/studies", content=body, headers={"content-type": content_type}, auth=auth,
                        timeout=120, trust_env=False)  # fmt: skip
    answer.raise_for_status()


def gateway_peak_mib(state: Path) -> float:
    """VmHWM (peak resident memory) summed over the gateway's process group: its supervisor and workers."""
    leader = json.loads((state / "stack.json").read_text())["gateway"]["pid"]
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != leader:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0)
    return total_kib / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed pulls after the warm-up")
    args = parser.parse_args(argv)
    ports = {name: free_port() for name in DEFAULT_PORTS}
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as folder:
        state = Path(folder)
        env = {
            **os.environ,
            **{f"BT_{name.upper()}_PORT": str(port) for name, port in ports.items()},
            "BT_ORTHANC_PORT": str(free_port()),
            "BT_STATE_DIR": folder,
        }
        try:
            up = subprocess.run([sys.executable, "-m", "deploy.stack", "up", "--pacs"], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=1800)  # fmt: skip
            if up.returncode != 0:
                print(up.stdout[-3000:], up.stderr[-3000:], file=sys.stderr)
                return 1
            config = json.loads((state / "orthanc" / "orthanc.json").read_text())
            auth = next(iter(config["RegisteredUsers"].items()))
            dicomweb = f"http://127.0.0.1:{config['HttpPort']}/dicom-web"
            study, files = series_files(SLICES)
            stow(dicomweb, auth, files)
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            runs = []
            for _ in range(args.runs + 1):
                started = time.perf_counter()
                answer = httpx.post(f"{gateway}/v1/studies/{study}/classify", params={"model": "ensemble"},
                                    timeout=600, trust_env=False)  # fmt: skip
                wall_ms = (time.perf_counter() - started) * 1000
                answer.raise_for_status()
                body = answer.json()
                assert len(body["slices"]) == SLICES and all(report["stored"] for report in body["reports"])
                runs.append({"wall": wall_ms, **body["timings_ms"]})
            peak = gateway_peak_mib(state)
            summary = body["summary"]
        finally:
            subprocess.run([sys.executable, "-m", "deploy.stack", "down"], cwd=PROJECT_ROOT, env=env, timeout=120)
    timed = runs[1:]

    def median(key: str) -> float:
        return statistics.median(run[key] for run in timed)

    beyond = statistics.median(run["wall"] - run["classify"] for run in timed)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {label} | {median(key):.0f} |"
        for label, key in (
            ("fetch: QIDO-RS + 24 WADO-RS retrievals", "fetch"),
            ("classify: 24 slices through inference (ensemble, guard, sets)", "classify"),
            ("report: the TID 1500 SR built (highdicom)", "report"),
            ("store: STOW-RS of the report", "store"),
            ("**wall time of the request**", "wall"),
        )
    )
    title = f"DICOMweb: a 24-slice series pulled, classified and stored (`{command_line('benchmarks.dicomweb', argv)}`)"
    body_md = f"""## {title}

{when} on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()}), Python {platform.python_version()};
machine shared with other work, so upper bounds. `python -m deploy.stack up --pacs` (pretrained bundle, Orthanc
with its DICOMweb plugin on loopback), one 8-bit MR series of {SLICES} sample slices stored in Orthanc, then
`POST /v1/studies/{{study}}/classify?model=ensemble`: one warm-up, then the median of {len(timed)} runs (each stores
a new SR). Summary of the last answer: `{summary["label"]}`, slices per label {summary["slices_per_label"]}.

| step (median, ms) | ms |
|---|---:|
{rows}
| **beyond the classification (wall - classify)** | **{beyond:.0f}** |

Target: at most 2,000 ms beyond the classification ({"met" if beyond <= 2000 else "missed"}). Gateway peak
resident memory (VmHWM summed over its supervisor and workers, after the runs): {peak:.0f} MiB.
"""
    print(body_md)
    write_section("dicomweb-series", body_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
