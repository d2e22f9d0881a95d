"""The serving benchmark's section of docs/benchmarks.md: tables, targets with their verdicts, the profile."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

SECTION = "serving"
COMPARE_P50_MS = 10.0
GATEWAY_P99_MS = 500.0
OVER_MLSERVER = 1.5
RSS_WORKER_MB, RSS_TOTAL_MB = 400.0, 800.0
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
    classify = results.get("in_process_classify_ms")
    if not (gateway and inference and classify):
        return []
    served, whole = inference["c1"]["p50_ms"], gateway["c1"]["p50_ms"]
    return [
        f"Where the gateway's p50 at concurrency 1 ({whole:.1f} ms) goes, by differences of medians of this run: "
        f"file bytes to probabilities in-process {classify:.1f} ms; the guard, inference's HTTP, multipart and "
        f"framework, and the load generator's own client {served - classify:.1f} ms (inference's own p50: "
        f"{served:.1f} ms); the gateway's hop {whole - served:.1f} ms.",
        "",
    ]


def _find(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((row for row in rows if row["name"].startswith(prefix)), None)


def _rps(row: dict[str, Any] | None, level: int) -> float | None:
    point = None if row is None else row.get(f"c{level}")
    return None if point is None else float(point["rps"])


def _verdict(met: bool | None) -> str:
    return "no figure" if met is None else "**met**" if met else "**missed**"


def _p50(row: dict[str, Any] | None) -> float | None:
    point = None if row is None else row.get("c1")
    return None if point is None else float(point["p50_ms"])


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets, every figure against a peer of this run."""
    http, external = results.get("http", []), results.get("external", [])
    gateway, compare, oip = _find(http, GATEWAY), _find(http, COMPARE), _find(http, "inference OIP")
    mlserver = _find(external, "MLServer")
    theirs_c32, theirs_p50 = _rps(mlserver, 32), _p50(mlserver)
    gw_c32 = _rps(gateway, 32)
    out: list[tuple[str, str, bool | None]] = []

    def add(target: str, measured: str | None, met: bool | None) -> None:
        out.append((target, measured or "not measured", met if measured else None))

    both = gw_c32 and theirs_c32
    add("gateway `/v1/predict` (a JPEG, decoded and guarded) at c32 >= MLServer's throughput (FP32 tensor)",
        both and f"{gw_c32 / theirs_c32:.2f}x ({gw_c32:.0f}/s against {theirs_c32:.0f}/s)",
        bool(both) and gw_c32 >= theirs_c32)  # fmt: skip
    p99 = None if gateway is None or gateway.get("c32") is None else gateway["c32"]["p99_ms"]
    add(f"gateway p99 at c32 <= {GATEWAY_P99_MS:.0f} ms", p99 is not None and f"{p99:.0f} ms",
        p99 is not None and p99 <= GATEWAY_P99_MS)  # fmt: skip
    oip_c32 = _rps(oip, 32)
    both = oip_c32 and theirs_c32
    add(f"inference OIP infer (the same FP32 JSON) at c32 >= {OVER_MLSERVER:.1f}x MLServer's throughput",
        both and f"{oip_c32 / theirs_c32:.2f}x ({oip_c32:.0f}/s against {theirs_c32:.0f}/s)",
        bool(both) and oip_c32 >= OVER_MLSERVER * theirs_c32)  # fmt: skip
    gw_p50, floor = _p50(gateway), results.get("in_process_classify_ms")
    both = gw_p50 and theirs_p50
    add("gateway p50 at c1 <= 2x MLServer's", both and f"{gw_p50 / theirs_p50:.2f}x ({gw_p50:.1f} ms against "
        f"{theirs_p50:.1f} ms)", bool(both) and gw_p50 <= 2 * theirs_p50)  # fmt: skip
    both = gw_p50 and floor
    add("gateway p50 at c1 <= 2x in-process (file bytes to probabilities, the served CNN)",
        both and f"{gw_p50 / floor:.2f}x ({gw_p50:.1f} ms against {floor:.2f} ms)",
        bool(both) and gw_p50 <= 2 * floor)  # fmt: skip
    cmp_p50 = _p50(compare)
    add(f"`/v1/compare` (four models) p50 <= {COMPARE_P50_MS:.0f} ms", cmp_p50 and f"{cmp_p50:.1f} ms",
        bool(cmp_p50) and cmp_p50 <= COMPARE_P50_MS)  # fmt: skip
    for row in http:
        c8, c32 = _rps(row, 8), _rps(row, 32)
        if c8 and c32:
            add(f"{row['name']}: throughput at c32 >= at c8", f"{c32:.0f}/s against {c8:.0f}/s", c32 >= c8)
    rss = results.get("rss_after_load") or {}
    if rss.get("workers"):
        largest, total = rss["largest_worker"], rss["total"]
        add(f"inference resident memory per worker <= {RSS_WORKER_MB:.0f} MB (four models, ensemble, guard)",
            f"{largest:.0f} MB ({len(rss['workers'])} workers)", largest <= RSS_WORKER_MB)  # fmt: skip
        add(f"inference resident memory in all <= {RSS_TOTAL_MB:.0f} MB", f"{total:.0f} MB", total <= RSS_TOTAL_MB)
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
        f"{'; --quick: short loads, few epochs' if quick else ''}). Models: {results.get('models_from', '?')} "
        f"({_versions(results.get('versions', {}))}); the CNN takes {results.get('contract', {}).get('image_size')}"
        "px images. Every request carries one sample image (glioma_000.jpg). In-process, the served CNN takes "
        f"{results.get('in_process_classify_ms') or 0:.2f} ms (p50) from the file's bytes to its probabilities "
        "(decoding, the contract, onnxruntime with its default threads; no guard).",
        "",
        "### In-process: native model against onnxruntime (median of repeated calls)",
        "",
        *in_process_table(results.get("in_process", [])),
        "",
        "### Over HTTP on loopback",
        "",
        "A separate process generates the load (httpx, asyncio, one kept-alive connection per concurrent client, "
        f"warmed up first); c1: up to {latency[0]} requests or {latency[1]:.0f} s, c8 and c32: up to "
        f"{throughput[0]} requests or {throughput[1]:.0f} s. Inference and the gateway run as the stack runs them "
        "(`python -m services.<name>`, default settings: one worker process per core, dynamic batching on with no "
        "window); MLServer with its defaults; Triton (PyTriton) with onnxruntime on every core and batches of up to "
        "32. non-200 counts answers other than 200 and transport errors.",
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
    workers = ", ".join(f"{value:.0f}" for value in after.get("workers", []))
    lines += [
        "",
        f"Inference resident memory with the four models, the ensemble and the guard loaded in every worker: "
        f"{rss.get('total', 0):.0f} MB in all; after the loads {after.get('total', 0):.0f} MB in all, workers "
        f"{workers} MB (the rest: uvicorn's supervisor and multiprocessing's resource tracker).",
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
