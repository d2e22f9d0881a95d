"""CNN variants on a validation slice: `python -m benchmarks.cnn_variants --data PATH [VARIANT ...]`.

Each variant is the CNN family's defaults with some parameters changed (`name:key=value,key=value`; a
bare `name` is the defaults). It trains on the training part of the run's split minus a
duplicate-group-aware 20% validation slice and reports accuracy on that slice, as served (mirror
averaging included). The test split is never touched: this is how defaults get chosen. Writes its table
to docs/benchmarks.md. Each variant costs minutes on 2 cores (about 7 for the defaults at 96 px).
Training accuracy under mixup is measured on blended images, so compare it only between like variants.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.markdown import write_section
from services.training.cli import parse_override
from services.training.data import prepare_data
from services.training.families import get_family
from services.training.splits import split_train_test

DEFAULT_VARIANTS = ["defaults", "no-mixup:mixup_alpha=0", "seed1:seed=1", "no-mixup-seed1:mixup_alpha=0,seed=1"]
# Keys a variant may set besides the family's defaults.
EXTRA_KEYS = {"seed", "class_weight"}


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
    parser.add_argument("variants", nargs="*", default=DEFAULT_VARIANTS)
    args = parser.parse_args(argv)

    data = prepare_data(args.data, 0.2, 42, args.cache_dir)
    labels, groups = data.train_labels, data.train_groups
    fit_idx, val_idx = split_train_test(labels, groups, 0.2, args.slice_seed)
    family = get_family("cnn")
    rows = []
    for spec in args.variants:
        name, changes = parse_variant(spec, set(family.default_params()) | EXTRA_KEYS)
        params = {**family.default_params(), **changes}
        size = int(params["image_size"])
        pixels = data.train(size)
        started = time.perf_counter()
        fitted = family.fit(
            pixels[fit_idx], labels[fit_idx], params, family.contract(size), (pixels[val_idx], labels[val_idx])
        )
        accuracy = float((family.predict_native(fitted, pixels[val_idx]).argmax(1) == labels[val_idx]).mean())
        minutes = (time.perf_counter() - started) / 60
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(defaults)"
        rows.append(f"| {name} | {changed} | {accuracy:.4f} | {fitted.history['accuracy'][-1]:.3f} | {minutes:.1f} |")
        print(rows[-1], flush=True)
    body = f"""## CNN variants (`python -m benchmarks.cnn_variants --data {args.data} ...`)

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()});
one run per row. Trained on {len(fit_idx)} training images, scored on a duplicate-aware validation slice of
{len(val_idx)} more (slice seed {args.slice_seed}); the test split is not used.

| variant | changed from the defaults | validation accuracy | last-epoch training accuracy | minutes |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""
    print(body)
    write_section("cnn-variants", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
