"""Variants of one family on a validation slice:
`python -m benchmarks.family_variants --data PATH --family cnn [VARIANT ...]`.

Each variant is the family's defaults with some parameters changed (`name:key=value,key=value`; a bare
`name` is the defaults). It trains on the training part of the run's split minus a duplicate-group-aware
20% validation slice and reports accuracy on that slice, as served (the CNN's mirror averaging included).
The test split is never touched: this is how defaults get chosen. Writes its table to docs/benchmarks.md,
one section per family. A CNN variant costs minutes on 2 cores (about 11 for the defaults at 96 px), a
forest variant under one. Training accuracy under mixup is measured on blended images, so compare it only
between like variants.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.markdown import command_line, write_section
from services.training.cli import parse_override
from services.training.data import prepare_data
from services.training.families import get_family
from services.training.splits import split_train_test

# What docs/benchmarks.md shows: the command with no variants reruns these.
DEFAULT_VARIANTS = {
    "cnn": [
        "defaults",
        "seed1:seed=1",
        "decay-1e-4:weight_decay=0.0001",
        "decay-1e-4-seed1:weight_decay=0.0001,seed=1",
    ],
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
    parser.add_argument("variants", nargs="*", help="default: the family's rows in docs/benchmarks.md")
    args = parser.parse_args(argv)

    data = prepare_data(args.data, 0.2, 42, args.cache_dir)
    labels, groups = data.train_labels, data.train_groups
    fit_idx, val_idx = split_train_test(labels, groups, 0.2, args.slice_seed)
    family = get_family(args.family)
    rows = []
    for spec in args.variants or DEFAULT_VARIANTS[args.family]:
        name, changes = parse_variant(spec, family.accepted_params() - NOT_APPLIED_HERE)
        params = {**family.default_params(), **changes}
        size = int(params["image_size"])
        pixels = data.train(size)
        started = time.perf_counter()
        contract = family.contract(size, params.get("scaling"))
        fitted = family.fit(pixels[fit_idx], labels[fit_idx], params, contract, (pixels[val_idx], labels[val_idx]))
        accuracy = float((family.predict_native(fitted, pixels[val_idx]).argmax(1) == labels[val_idx]).mean())
        minutes = (time.perf_counter() - started) / 60
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(defaults)"
        training = f"{fitted.history['accuracy'][-1]:.3f}" if "accuracy" in fitted.history else "-"
        rows.append(f"| {name} | {changed} | {accuracy:.4f} | {training} | {minutes:.1f} |")
        print(rows[-1], flush=True)
    command = command_line("benchmarks.family_variants", argv)
    body = f"""## {family.title} variants (`{command}`)

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()});
one run per row. Trained on {len(fit_idx)} training images, scored on a duplicate-aware validation slice of
{len(val_idx)} more (slice seed {args.slice_seed}); the test split is not used.

| variant | changed from the defaults | validation accuracy | last-epoch training accuracy | minutes |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""
    print(body)
    write_section(f"{args.family}-variants", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
