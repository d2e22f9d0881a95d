"""The serving benchmark's section of docs/benchmarks.md: tables, targets with their verdicts, the profile."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

SECTION = "serving"
GATEWAY_OVER_ORT_MS = 3.0
COMPARE_P50_MS = 10.0
OVER_MLFLOW_SERVE, OVER_MLSERVER = 10.0, 2.0
RSS_MB = 500.0
GATEWAY = "gateway `/v1/predict?model=cnn` (image)"
COMPARE = "gateway `/v1/compare` (four models)"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return "-" if not numerator or not denominator else f"{numerator / denominator:.1f}x"


def in_process_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| family | input | native API | native p50 ms, 1 image | onnxruntime | ratio | native, batch of 32 "
        "| onnxruntime | ratio | Keras direct call, 1 / 32 | onnxruntime from file bytes, 1 image |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['family']} | - | failed: {row['error']} | | | | | | | | |")
            continue
        direct = f"{_ms(row['direct_1_ms'])} / {_ms(row['direct_32_ms'])}" if "direct_1_ms" in row else "-"
        lines.append(
            f"| {row['family']} | {row['image_size']}px | {row['native_api']} | {_ms(row['native_1_ms'])} "
            f"| {_ms(row['ort_1_ms'])} | {_ratio(row['native_1_ms'], row['ort_1_ms'])} | {_ms(row['native_32_ms'])} "
            f"| {_ms(row['ort_32_ms'])} | {_ratio(row['native_32_ms'], row['ort_32_ms'])} | {direct} "
            f"| {_ms(row['ort_classify_ms'])} |"
        )
    return lines


def http_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| path | p50 ms, c1 | p99 ms, c1 | requests/s, c8 | p99 ms, c8 | requests/s, c32 | p99 ms, c32 | non-200 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        points = [row.get(f"c{level}") for level in (1, 8, 32)]
        errors = sum(sum(point["errors"].values()) for point in points if point)
        cells = [_ms(points[0]["p50_ms"]), _ms(points[0]["p99_ms"])]
        for point in points[1:]:
            cells += ["-", "-"] if point is None else [f"{point['rps']:.0f}", _ms(point["p99_ms"])]
        lines.append(f"| {row['name']} | {' | '.join(cells)} | {errors} |")
    return lines


def inside_table(rows: list[dict[str, Any]]) -> list[str]:
    """What inference's own histograms saw during each load point (rows measured with them)."""
    lines = [
        "| path | concurrency | onnxruntime runs per request | images per run | mean run ms | mean queue wait ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for level in (1, 8, 32):
            inside = (row.get(f"c{level}") or {}).get("inside")
            if not inside or inside["runs_per_request"] is None:
                continue
            lines.append(
                f"| {row['name']} | {level} | {inside['runs_per_request']:.2f} | {_num(inside['mean_batch'])} "
                f"| {_ms(inside['mean_run_ms'])} | {_ms(inside['mean_wait_ms'])} |"
            )
    return lines if len(lines) > 2 else []


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def decomposition(results: dict[str, Any]) -> list[str]:
    """The gateway's p50 at concurrency 1 split by what each layer adds, from figures of this run."""
    http = results.get("http", [])
    gateway, inference = _find(http, GATEWAY), _find(http, "inference `/v1/models/cnn/predict`")
    cnn = next((row for row in results.get("in_process", []) if row["family"] == "cnn" and "ort_1_ms" in row), None)
    if not (gateway and inference and cnn):
        return []
    run, classify = cnn["ort_1_ms"], cnn["ort_classify_ms"]
    served, whole = inference["c1"]["p50_ms"], gateway["c1"]["p50_ms"]
    families = [row for row in results.get("in_process", []) if "ort_1_ms" in row]
    each = ", ".join(f"{row['family']} {row['ort_1_ms']:.1f}" for row in families)
    compare = [
        "`/v1/compare` at concurrency 1 cannot be faster than its models' own runs unless they run side by side: "
        f"the {len(families)} onnxruntime runs alone, one image each, one after the other, take "
        f"{sum(row['ort_1_ms'] for row in families):.1f} ms in-process ({each}), before any decoding.",
        "",
    ]
    return compare + [
        f"Where the gateway's p50 at concurrency 1 ({whole:.1f} ms) goes, by differences of medians of this run: "
        f"onnxruntime run in-process {run:.1f} ms; decoding and the contract's preprocessing {classify - run:.1f} ms "
        f"(file bytes to probabilities in-process: {classify:.1f} ms); inference's HTTP, multipart and framework "
        f"{served - classify:.1f} ms (its own p50: {served:.1f} ms); the gateway's hop {whole - served:.1f} ms.",
        "",
    ]


def _find(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((row for row in rows if row["name"].startswith(prefix)), None)


def _rps(row: dict[str, Any] | None, level: int) -> float | None:
    point = None if row is None else row.get(f"c{level}")
    return None if point is None else float(point["rps"])


def _verdict(met: bool | None) -> str:
    return "no figure" if met is None else "**met**" if met else "**missed**"


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets."""
    http = results.get("http", [])
    gateway, compare = _find(http, GATEWAY), _find(http, COMPARE)
    cnn = next((row for row in results.get("in_process", []) if row["family"] == "cnn" and "ort_1_ms" in row), None)
    out: list[tuple[str, str, bool | None]] = []
    if gateway and cnn:
        bound = cnn["ort_1_ms"] + GATEWAY_OVER_ORT_MS
        p50 = gateway["c1"]["p50_ms"]
        out.append((f"gateway p50 <= in-process onnxruntime CNN p50 + {GATEWAY_OVER_ORT_MS:.0f} ms",
                    f"{p50:.1f} ms against {bound:.1f} ms", p50 <= bound))  # fmt: skip
    if compare:
        p50 = compare["c1"]["p50_ms"]
        out.append((f"`/v1/compare` p50 <= {COMPARE_P50_MS:.0f} ms", f"{p50:.1f} ms", p50 <= COMPARE_P50_MS))
    c8, c32 = _rps(gateway, 8), _rps(gateway, 32)
    if c8 and c32:
        out.append(("gateway throughput at c32 >= at c8", f"{c32:.0f}/s against {c8:.0f}/s", c32 >= c8))
    external = results.get("external", [])
    oip = _rps(_find(http, "inference OIP"), 32)
    for prefix, factor in (("`mlflow models serve`", OVER_MLFLOW_SERVE), ("MLServer", OVER_MLSERVER)):
        theirs = _rps(_find(external, prefix), 32)
        label = f"gateway throughput at c32 >= {factor:.0f}x {prefix}"
        if c32 and theirs:
            # The OIP route takes the very tensor body the others take: shown beside, the verdict is the gateway's.
            beside = f"; inference's OIP infer {oip / theirs:.1f}x ({oip:.0f}/s)" if oip else ""
            measured = f"{c32 / theirs:.1f}x ({c32:.0f}/s against {theirs:.0f}/s){beside}"
            out.append((label, measured, c32 >= factor * theirs))
        else:
            out.append((label, "not measured", None))
    rss = results.get("rss_after_load", {}).get("VmRSS")
    if rss is not None:
        out.append((f"inference RSS <= {RSS_MB:.0f} MB, four models loaded", f"{rss:.0f} MB", rss <= RSS_MB))
    return out


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    if results.get("oip_note"):
        notes.append(f"OIP infer row skipped: one request was not answered 200 ({results['oip_note']}).")
    for key, what in (("batching_note", "Batching rows"), ("mlflow_serve_note", "`mlflow models serve` row"),
                      ("mlserver_note", "MLServer row"), ("triton_note", "Triton row")):  # fmt: skip
        if results.get(key):
            notes.append(f"{what} skipped: {results[key]}")
    return notes


def profile_lines(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return ["No profile: py-spy was not found (it is installed with MLServer's environment)."]
    lines = ["Where the time goes under load (py-spy, 250 samples/s of every thread, while the gateway takes "
             "concurrency 8; a sample counts for the innermost frame that names a part; threads idle waiting for "
             "work left out, threads blocked on a socket, such as a call to MLflow, counted):", ""]  # fmt: skip
    for name, (total, top) in profile.items():
        shares = "; ".join(f"{label} {share:.0%}" for label, share in top if share >= 0.01)
        lines.append(f"- {name} ({total} busy samples): {shares}")
    return lines


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{family} v{version}" for family, version in versions.items())


def render(results: dict[str, Any], command: str, quick: bool) -> str:
    load = results["load_before"], results["load_after"]
    latency, throughput = results["loads"]
    lines = [
        "## Serving (`python -m benchmarks.serving`)",
        "",
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPU cores, "
        f"{platform.machine()}, Python {platform.python_version()}), {results['minutes']:.1f} minutes; load average "
        f"{load[0][0]:.1f} before / {load[1][0]:.1f} after (one run, machine possibly shared"
        f"{'; --quick: short loads, few epochs' if quick else ''}). Models: the four families trained on the "
        f"embedded sample with `--search none` ({_versions(results.get('versions', {}))}); the CNN takes "
        f"{results.get('contract', {}).get('image_size', '?')}px images. Every request carries one sample image "
        "(glioma_000.jpg).",
        "",
        "### In-process: native model against onnxruntime (median of repeated calls)",
        "",
        *in_process_table(results.get("in_process", [])),
        "",
        "### Over HTTP on loopback",
        "",
        "A separate process generates the load (httpx, asyncio, one kept-alive connection per concurrent client, "
        f"warmed up first); c1: up to {latency[0]} requests or {latency[1]:.0f} s, c8 and c32: up to "
        f"{throughput[0]} requests or {throughput[1]:.0f} s. Inference and the gateway run with their default "
        "settings, one uvicorn worker each; the other servers with their defaults. non-200 counts answers "
        "other than 200 and transport errors.",
        "",
        *http_table(results.get("http", []) + results.get("batching", []) + results.get("external", [])),
        "",
        "Inside inference during the same load points (differences of its own `/metrics` histograms for the CNN):",
        "",
        *inside_table(results.get("http", []) + results.get("batching", [])),
        "",
        *decomposition(results),
    ]
    if results.get("batching"):
        lines.append(f"Dynamic batching by default: {results.get('batching_default')}.")
    model = results.get("external_model")
    if model:
        lines.append(f"The other servers serve CNN version {model['version']} from `{model['uri']}` ({model['how']}).")
    rss = results.get("rss_loaded", {})
    after = results.get("rss_after_load", {})
    lines += [
        "",
        f"Inference resident memory with the four models loaded: {rss.get('VmRSS', 0):.0f} MB; after the loads "
        f"{after.get('VmRSS', 0):.0f} MB (peak {after.get('VmHWM', 0):.0f} MB).",
        "",
        "### Targets",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        *[f"| {target} | {measured} | {_verdict(met)} |" for target, measured, met in targets(results)],
        "",
        *profile_lines(results.get("profile")),
        *([""] + _notes(results) if _notes(results) else []),
    ]
    return "\n".join(lines)
