"""Explanation benchmark: `python -m benchmarks.explain_benchmark [--gateway URL]`.

Against a running stack (`python -m deploy.stack up`), times the default LIME explanation of every
family end to end (gateway -> explainer -> inference's batch endpoint -> onnxruntime) on sample
images, and measures how stable the default is: the overlap (Jaccard) of the top regions that two
seeds find on the same image. Prints a table and writes it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.markdown import command_line, write_section
from shared.core.contract import CLASS_NAMES
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.kit.schemas import MODEL_FAMILIES

SECTION = "explain"
CNN_BOUND_S = 3.0


def sample_images(per_class: int) -> list[Path]:
    """The first ``per_class`` sample slices of every class."""
    return [path for name in CLASS_NAMES for path in sorted((SAMPLE_DATA_DIR / name).glob("*.jpg"))[:per_class]]


def explain(client: httpx.Client, path: Path, **params: Any) -> tuple[float, dict[str, Any]]:
    """One explanation: (wall-clock seconds, answer)."""
    started = time.perf_counter()
    response = client.post("/v1/explain", params=params, files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, response.json()


def top_jaccard(a: dict[str, Any], b: dict[str, Any]) -> float:
    first = {region["segment"] for region in a["regions"]}
    second = {region["segment"] for region in b["regions"]}
    return len(first & second) / len(first | second)


def measure(
    client: httpx.Client, family: str, images: list[Path], repeats: int, regions: int, samples: int | None
) -> dict[str, Any]:
    """Timings of ``repeats`` calls per image with seed 0, and the top-region overlap with seed 1."""
    params: dict[str, Any] = {"model": family, "num_regions": regions}
    if samples is not None:
        params["num_samples"] = samples
    explain(client, images[0], **params)  # warm: the first use of a version loads it
    wall: list[float] = []
    server: list[float] = []
    predict: list[float] = []
    overlaps: list[float] = []
    segments: list[int] = []
    answer: dict[str, Any] = {}
    for path in images:
        for _ in range(repeats):
            seconds, answer = explain(client, path, seed=0, **params)
            wall.append(seconds)
            server.append(answer["latency_ms"] / 1000.0)
            predict.append(answer["timings_ms"]["predict"] / 1000.0)
        _, other = explain(client, path, seed=1, **params)
        overlaps.append(top_jaccard(answer, other))
        segments.append(answer["num_segments"])
    return {
        "family": family,
        "version": answer["version"],
        "samples": answer["num_samples"],
        "segments": f"{min(segments)}-{max(segments)}",
        "median_s": statistics.median(wall),
        "best_s": min(wall),
        "worst_s": max(wall),
        "server_s": statistics.median(server),
        "predict_share": statistics.median(p / s for p, s in zip(predict, server, strict=True)),
        "overlap_mean": statistics.mean(overlaps),
        "overlap_min": min(overlaps),
        "overlaps": overlaps,
    }


def render(
    rows: list[dict[str, Any]], images: int, repeats: int, regions: int, load: tuple[float, float], command: str
) -> str:
    lines = [
        "## Explanations (LIME)",
        "",
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before / {load[1]:.1f} after. Models: the versions "
        "the stack serves by default. Default request (500 samples, SLIC superpixels, seed 0) unless the samples "
        f"column says otherwise, end to end through the gateway, {images} sample images "
        f"({images // len(CLASS_NAMES)} per class) x {repeats} timed call{'s' if repeats > 1 else ''} each. "
        f"Stability: Jaccard overlap of the top {regions} regions (by absolute weight) found with seed 0 and "
        "seed 1 on the same image (1.0: the same regions).",
        "",
        "| family | version | samples | superpixels | median s | best s | worst s | explainer s | model share "
        f"| top-{regions} overlap, mean | min | per image |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        per_image = " ".join(f"{value:.2f}" for value in row["overlaps"])
        lines.append(
            f"| {row['family']} | {row['version']} | {row['samples']} | {row['segments']} | {row['median_s']:.2f} "
            f"| {row['best_s']:.2f} | {row['worst_s']:.2f} | {row['server_s']:.2f} | {row['predict_share']:.0%} "
            f"| {row['overlap_mean']:.2f} | {row['overlap_min']:.2f} | {per_image} |"
        )
    cnn = next((row for row in rows if row["family"] == "cnn" and row["default"]), None)
    if cnn is not None:
        verdict = "within" if cnn["median_s"] <= CNN_BOUND_S else "over"
        lines += [
            "",
            f"Default CNN explanation: median {cnn['median_s']:.2f} s, {verdict} the {CNN_BOUND_S:.0f} s bound.",
        ]
    lines += [
        "",
        "\"model share\" is the part of the explainer's time spent waiting for the inference service's "
        "batch endpoint (the onnxruntime runs); the rest is segmentation, LIME's sampling and regression, "
        "and the overlay PNG.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default=f"http://127.0.0.1:{os.environ.get('BT_GATEWAY_PORT', '8000')}")
    parser.add_argument("--families", default=",".join(MODEL_FAMILIES))
    parser.add_argument("--per-class", type=int, default=1, help="sample images per class")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per image")
    parser.add_argument("--regions", type=int, default=5, help="top regions compared between seeds")
    parser.add_argument(
        "--samples", default="default", help="comma-separated sample counts to measure, e.g. default,1000"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    images = sample_images(args.per_class)
    load_before = os.getloadavg()[0]
    rows = []
    with httpx.Client(base_url=args.gateway, timeout=300.0, trust_env=False) as client:
        for family in args.families.split(","):
            for count in args.samples.split(","):
                samples = None if count == "default" else int(count)
                print(f"explaining with {family} ({count} samples) ...", flush=True)
                row = measure(client, family, images, args.repeats, args.regions, samples)
                rows.append({**row, "default": samples is None})
    command = command_line("benchmarks.explain_benchmark", argv)
    text = render(rows, len(images), args.repeats, args.regions, (load_before, os.getloadavg()[0]), command)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
