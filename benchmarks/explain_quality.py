"""Explanation quality (issue 28): `python -m benchmarks.explain_quality --data PATH [--images test|train]`.

For each model version (``--models cnn=1,mobilenetv2=2,ensemble=2``) and each method (occlusion; LIME with seeds
0, 1, 2) on ``--per-class`` images of every class of the test split (or, with ``--images train``, of the
training part, for choosing settings without touching a test image), this measures:

- faithfulness: deletion and insertion AUCs (``benchmarks.explain_faithfulness``) with the grey and the blur
  fill, the method's ranking against three random orders of its own regions (seeds 0, 1, 2);
- stability: the Jaccard overlap of LIME's top-5 supporting regions across seeds 0/1/2 (mean of the three
  pairs); occlusion has no seed, and is checked to give the same weights twice;
- rim share: the share of the top-5 supporting regions' area inside ``head_rim`` (skull and scalp) against the
  rim's share of the head;
- background: the share of images with a region that has pixels outside ``head_mask``;
- speed: seconds per explanation through the gateway (``POST /v1/explain?method=...``), median and p90 over the
  images after one warm-up call.

The explanations are computed in this process (``shared.core.explanation``) with a ``PredictMasked`` that calls
the inference service's ``/v1/models/{m}/predict-masked``: every figure is about the served model. The test split
is recomputed as training makes it and compared with each version's ``test_files_sha256`` tag (and its ensemble
members'); ``--images test`` refuses to run when one differs. The tables go to docs/benchmarks.md (section
"explain-quality").

Recipe (nothing of another session's stack is touched; every port is a free ephemeral one):

    cp -a var/bundle-build-1206 /work/x28-state          # a copy: MLflow writes to its store, never the original
    export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=...   # the store's admin (var/rebuild/env.sh)
    python -m benchmarks.explain_quality --mlflow-dir /work/x28-state/mlflow \\
        --data ../shared/data/brain-tumor-mri/Training --images test --per-class 12

On 2 shared cores, 4 images per class with LIME on all three models took 18 minutes (the ensemble 40% of it,
MobileNetV2 30%); ``--lime-models cnn,ensemble`` leaves MobileNetV2's LIME out (its occlusion is still measured).

With ``--mlflow-dir`` the benchmark starts MLflow on that store itself; ``--tracking-uri URL`` uses a running
server instead. Either way it starts its own inference service (``BT_INFERENCE_TRACKING_URI``, no preloading),
explainer (``BT_EXPLAINER_INFERENCE_URL``) and gateway (``BT_GATEWAY_INFERENCE_URL``, ``BT_GATEWAY_EXPLAINER_URL``)
with ``deploy.processes`` as the stack does, logs, model cache and audit trail under ``--state-dir``, and stops
them at the end. ``--gateway URL --inference URL`` measure a stack that is already up instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.explain_quality_report import Figures, render
from benchmarks.explain_quality_run import ModelUnderTest, OcclusionGrid, measure_model, time_gateway
from benchmarks.explain_split import (
    choose_images,
    mlflow_tags,
    pinned_versions,
    recompute_split,
    split_mismatches,
)
from benchmarks.markdown import command_line, write_section
from deploy.credentials import mlflow_auth_from_env
from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from shared.core.contract import CLASS_NAMES
from shared.core.explanation.occlusion import DEFAULT_SHIFTS
from shared.core.explanation.regions import DEFAULT_CELLS
from shared.core.masking import MAX_GRID_SIDE
from shared.kit.schemas import ContractOut

SECTION = "explain-quality"
DEFAULT_MODELS = "cnn=1,mobilenetv2=2,ensemble=2"


@dataclass(frozen=True)
class Urls:
    tracking: str
    inference: str
    gateway: str


def parse_models(text: str) -> dict[str, str]:
    """``cnn=1,ensemble=2`` -> {"cnn": "1", "ensemble": "2"}; every model needs an explicit version."""
    models = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        model, sep, version = item.partition("=")
        if not sep or not model or not version:
            raise argparse.ArgumentTypeError(f"expected model=version, got {item!r}")
        models[model] = version
    return models


def stop_on_sigterm() -> None:
    """SIGTERM ends the run as Ctrl-C does: through ``stack``'s cleanup, so no service it started is left behind."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


@contextlib.contextmanager
def stack(args: argparse.Namespace) -> Iterator[Urls]:
    """The services to measure: the ones named by URL, or our own, stopped whatever happens."""
    started: list[ManagedProcess] = []
    logs = args.state_dir / "logs"
    try:
        tracking = args.tracking_uri
        if args.mlflow_dir is not None:
            started.append(start_mlflow(args.mlflow_dir, free_port(), logs / "mlflow.log"))
            tracking = started[-1].url
        if args.gateway and args.inference:
            yield Urls(tracking, args.inference, args.gateway)
            return
        audit = f"sqlite:///{(args.state_dir / 'audit' / 'trail.sqlite').resolve()}"
        env = {
            "MLFLOW_TRACKING_URI": tracking,
            "BT_INFERENCE_TRACKING_URI": tracking,
            "BT_INFERENCE_CACHE_DIR": str(args.state_dir / "models"),
            # Only the versions asked for are loaded, not every champion.
            "BT_INFERENCE_PRELOAD": "false",
            "BT_INFERENCE_AUDIT_URI": audit,
            "BT_GATEWAY_AUDIT_URI": audit,
            "BT_GATEWAY_MLFLOW_UI_URL": tracking,
        }
        inference = start_service("inference", free_port(), env, logs / "inference.log", as_module=True)
        started.append(inference)
        explainer_env = {
            **env,
            "BT_EXPLAINER_INFERENCE_URL": inference.url,
            # The explainer runs the occlusion measured in process, so the gateway's answers are the same.
            "BT_EXPLAINER_OCCLUSION_CELLS": str(args.occlusion_cells),
            "BT_EXPLAINER_OCCLUSION_SHIFTS": str(args.occlusion_shifts),
        }
        started.append(start_service("explainer", free_port(), explainer_env, logs / "explainer.log"))
        gateway_env = {**env, "BT_GATEWAY_INFERENCE_URL": inference.url, "BT_GATEWAY_EXPLAINER_URL": started[-1].url}
        started.append(start_service("gateway", free_port(), gateway_env, logs / "gateway.log", as_module=True))
        print(f"stack: MLflow {tracking}, inference {inference.url}, gateway {started[-1].url}", flush=True)
        yield Urls(tracking, inference.url, started[-1].url)
    finally:
        for process in reversed(started):
            process.stop()


def contract(http: httpx.Client, model: str, version: str) -> ContractOut:
    response = http.get(f"/v1/models/{model}/contract", params={"version": version})
    response.raise_for_status()
    return ContractOut.model_validate(response.json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the training data folder the models were split on")
    parser.add_argument("--images", choices=("test", "train"), default="test")
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--models", type=parse_models, default=parse_models(DEFAULT_MODELS))
    parser.add_argument("--lime-models", default=None, help="models LIME is measured on (default: every model)")
    parser.add_argument("--mlflow-dir", type=Path, default=None, help="start MLflow on this store (a copy)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    parser.add_argument(
        "--gateway",
        default=None,
        help="a running gateway (with --inference): start none; its explainer's occlusion "
        "settings must match --occlusion-cells/--occlusion-shifts, or the gateway's top 5 will differ",
    )
    parser.add_argument("--inference", default=None, help="a running inference service (with --gateway)")
    parser.add_argument(
        "--occlusion-cells", type=int, default=DEFAULT_CELLS, help="occlusion's patch: one cell of N x N"
    )
    parser.add_argument("--occlusion-shifts", type=int, default=DEFAULT_SHIFTS, help="occlusion's shifted grids")
    parser.add_argument("--state-dir", type=Path, default=Path("var/explain-quality"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.occlusion_shifts < 1 or not 2 <= args.occlusion_cells * args.occlusion_shifts <= MAX_GRID_SIDE:
        parser.error(f"--occlusion-shifts must be >= 1 and cells x shifts in 2..{MAX_GRID_SIDE}")
    stop_on_sigterm()
    lime_models = set(args.models) if args.lime_models is None else set(args.lime_models.split(","))

    started = time.perf_counter()
    split = recompute_split(args.data, args.state_dir / "cache")
    sha = split.info["test_files_sha256"]
    files = split.test_files if args.images == "test" else split.train_files
    figures: list[Figures] = []
    with stack(args) as urls:
        pinned = pinned_versions(args.models, mlflow_tags(urls.tracking, mlflow_auth_from_env()))
        mismatches = split_mismatches(sha, pinned)
        if mismatches and args.images == "test":
            print("refusing to measure on the test split:\n  " + "\n  ".join(mismatches))
            return 1
        with (
            httpx.Client(base_url=urls.inference, timeout=300.0, trust_env=False) as inference,
            httpx.Client(base_url=urls.gateway, timeout=300.0, trust_env=False) as gateway,
        ):
            for model, version in args.models.items():
                answer = contract(inference, model, version)
                images = choose_images(files, answer.contract.class_names, args.per_class)
                grid = OcclusionGrid(args.occlusion_cells, args.occlusion_shifts)
                under_test = ModelUnderTest(model, version, answer.contract, lime=model in lime_models, grid=grid)
                found = measure_model(inference, under_test, images)
                time_gateway(gateway, under_test, images, found)
                figures.append(found)
    minutes = (time.perf_counter() - started) / 60
    heading = {
        "command": command_line("benchmarks.explain_quality", argv),
        "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs",
        "images": f"{args.per_class} per class ({args.per_class * len(CLASS_NAMES)}), drawn with seed 0 from the "
        + ("test split" if args.images == "test" else "training part (no test image)")
        + f" of {args.data.name}/ recomputed as training makes it (test_files_sha256 {sha[:8]}, "
        + ("equal to every version's tag)" if not mismatches else "NOT every version's tag)"),
        "lime": ", ".join(model for model in args.models if model in lime_models),
        "occlusion": f"{args.occlusion_cells}x{args.occlusion_shifts}",
        "minutes": f"{minutes:.1f}",
        "pinned": ", ".join(f"{p.model} v{p.version}" for p in pinned if p.member_of),
    }
    text = render(figures, heading)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
