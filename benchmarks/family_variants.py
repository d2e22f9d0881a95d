"""Variants of one family on a validation slice:
`python -m benchmarks.family_variants --data PATH --family cnn [VARIANT ...]`.

Each variant is the family's defaults with some parameters changed (`name:key=value,key=value`; a bare
`name` is the defaults). It trains on the training part of the run's split minus a duplicate-group-aware
20% validation slice and reports accuracy on that slice, as served (the CNN's mirror averaging included).
The test split is never touched: this is how defaults get chosen. Writes its table to docs/benchmarks.md,
one section per family (`--section` names another). A CNN variant costs minutes on 2 cores (about 11 for
the defaults at 96 px), a forest variant under one. Training accuracy under mixup is measured on blended
images, so compare it only between like variants.

Robustness: the same slice is scored again with each image degraded, by Gaussian noise (sigma 10 on 0-255)
and by a JPEG re-encoding at quality 30, two ways: on the model's input pixels (`@model`: the harsher, as
nothing smooths the damage away) and on the original file before the service's own decode and resize
(`@file`: what a noisy or recompressed upload costs). The noise is seeded: every variant sees the same.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.markdown import command_line, write_section
from services.training.cli import parse_override
from services.training.config import TrainingSettings
from services.training.data import prepare_data
from services.training.families import FittedModel, ModelFamily, get_family
from services.training.splits import split_train_test
from shared.core.imaging import decode_grayscale, resize_gray

# What docs/benchmarks.md shows: the command with no variants reruns these.
DEFAULT_VARIANTS = {
    "cnn": [
        "defaults",
        "seed1:seed=1",
        "decay-1e-4:weight_decay=0.0001",
        "decay-1e-4-seed1:weight_decay=0.0001,seed=1",
    ],
    "mobilenetv2": ["defaults"],
    "rf": [
        "defaults",
        "seed1:seed=1",
        "extra-trees-0.1:max_features=0.1",
        "random-forest:forest=random_forest,max_features=0.1",
        "random-forest-seed1:forest=random_forest,max_features=0.1,seed=1",
    ],
}
# What training does around the family and this benchmark does not: a variant may not ask for it.
NOT_APPLIED_HERE = {"balancing"}
NOISE_SIGMA = 10.0  # on 0-255
JPEG_QUALITY = 30
NOISE_SEED = 2026  # one noise draw for every variant, so their robustness figures compare
DEGRADATIONS = ("noise@model", "jpeg@model", "noise@file", "jpeg@file")


def add_noise(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 image(s) plus Gaussian noise of NOISE_SIGMA, rounded and clipped back to 0..255."""
    return np.clip(np.rint(gray + rng.normal(0.0, NOISE_SIGMA, gray.shape)), 0, 255).astype(np.uint8)


def jpeg_round_trip(gray: np.ndarray) -> np.ndarray:
    """One uint8 grayscale image re-encoded as a JPEG of quality JPEG_QUALITY and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(buffer).convert("L"), dtype=np.uint8)


def degraded_sets(pixels: np.ndarray, paths: list[Path], size: int) -> dict[str, np.ndarray]:
    """The slice's images at the model's size, degraded each way of DEGRADATIONS (same seed every call)."""
    rng = np.random.default_rng(NOISE_SEED)
    sets = {
        "noise@model": add_noise(pixels, rng),
        "jpeg@model": np.stack([jpeg_round_trip(image) for image in pixels]),
    }
    originals = [np.asarray(decode_grayscale(path.read_bytes()), dtype=np.uint8) for path in paths]
    # The service decodes the upload to grayscale and resizes it: degrade before that, as an upload would be.
    sets["noise@file"] = np.stack([resize_gray(Image.fromarray(add_noise(o, rng)), size) for o in originals])
    sets["jpeg@file"] = np.stack([resize_gray(Image.fromarray(jpeg_round_trip(o)), size) for o in originals])
    return sets


def slice_accuracy(family: ModelFamily, fitted: FittedModel, images: np.ndarray, labels: np.ndarray) -> float:
    return float((family.predict_native(fitted, images).argmax(1) == labels).mean())


def parse_variant(spec: str, known: set[str]) -> tuple[str, dict[str, Any]]:
    name, _, assignments = spec.partition(":")
    items = [item for item in assignments.split(",") if item]
    changes = dict(parse_override(item) for item in items)
    if any("=" not in item for item in items) or not set(changes) <= known:
        raise SystemExit(f"bad variant {spec!r}: expected name:key=value,... with keys from {sorted(known)}")
    return name, changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"))
    parser.add_argument("--slice-seed", type=int, default=7, help="seed of the validation slice")
    parser.add_argument("--family", choices=sorted(DEFAULT_VARIANTS), required=True)
    parser.add_argument("--section", help="the docs/benchmarks.md section to write (default: FAMILY-variants)")
    parser.add_argument("variants", nargs="*", help="default: the family's rows in docs/benchmarks.md")
    args = parser.parse_args(argv)

    data = prepare_data(args.data, 0.2, 42, args.cache_dir)
    labels, groups = data.train_labels, data.train_groups
    fit_idx, val_idx = split_train_test(labels, groups, 0.2, args.slice_seed)
    family = get_family(args.family, TrainingSettings())
    val_paths = [data.train_files.paths[i] for i in val_idx]
    degraded: dict[int, dict[str, np.ndarray]] = {}
    rows = []
    for spec in args.variants or DEFAULT_VARIANTS[args.family]:
        name, changes = parse_variant(spec, family.accepted_params() - NOT_APPLIED_HERE)
        params = {**family.default_params(), **changes}
        size = int(params["image_size"])
        pixels = data.train(size)
        started = time.perf_counter()
        contract = family.contract(size, params.get("scaling"))
        fitted = family.fit(pixels[fit_idx], labels[fit_idx], params, contract, (pixels[val_idx], labels[val_idx]))
        minutes = (time.perf_counter() - started) / 60
        clean = slice_accuracy(family, fitted, pixels[val_idx], labels[val_idx])
        if size not in degraded:
            degraded[size] = degraded_sets(pixels[val_idx], val_paths, size)
        losses = [clean - slice_accuracy(family, fitted, images, labels[val_idx]) for images in degraded[size].values()]
        costs = " | ".join(f"{100 * loss:+.2f}" for loss in losses)
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(defaults)"
        training = f"{fitted.history['accuracy'][-1]:.3f}" if "accuracy" in fitted.history else "-"
        rows.append(f"| {name} | {changed} | {clean:.4f} | {costs} | {training} | {minutes:.1f} |")
        print(rows[-1], flush=True)
    command = command_line("benchmarks.family_variants", argv)
    columns = ["variant", "changed", "validation accuracy", *DEGRADATIONS, "training accuracy", "minutes"]
    header = f"| {' | '.join(columns)} |\n|{' --- |' * len(columns)}"
    body = f"""## {family.title} variants (`{command}`)

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()});
one run per row. Trained on {len(fit_idx)} training images, scored on a duplicate-aware validation slice of
{len(val_idx)} more (slice seed {args.slice_seed}); the test split is not used. The degraded columns are the
points of accuracy lost (positive: a loss) with Gaussian noise (sigma {NOISE_SIGMA:g} on 0-255) or a JPEG
re-encoding (quality {JPEG_QUALITY}), applied to the model's input pixels (@model) or to the original file
before the service's decode (@file). Training accuracy: the last epoch's. Minutes: training only.

{header}
{chr(10).join(rows)}
"""
    print(body)
    write_section(args.section or f"{args.family}-variants", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
