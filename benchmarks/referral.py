"""Prediction sets and referral, estimated by cross-validation over every training image:
`python -m benchmarks.referral --data PATH [--families rf,snn,cnn,mobilenetv2] [--folds 5] [--alpha 0.05]
[--set FAMILY.KEY=VALUE ...] [--save-probabilities FILE.npz]`.

The whole training folder is cut into K stratified folds that keep near-duplicate groups together. Each fold is
held out in turn: every family is fitted on the other folds as a run's refit fits it (its defaults, less the
pipeline's own calibration slice and, for a network that watches one, its early-stopping slice), its temperature
and conformal thresholds (``shared.core.conformal``) fitted on that calibration slice, and the fold scored; with
two families or more, their ensemble too (weights fitted on the slice, as training does). So every image is
scored once, by models that never saw it or its duplicates, and the figures are over all of them: coverage of
the sets, their mean size, the referral rate (sets of more than one class), the accuracy of the answers not
referred, and overall accuracy, each count with its 95% Wilson interval. ``--set mobilenetv2.image_size=224``
gives one family a recipe other than its defaults (the bundle's); ``--save-probabilities`` keeps every model's
calibrated out-of-fold probabilities, and each fold's calibration slice's, for other referral rules to be judged
on. Writes its table to docs/benchmarks.md
(section "referral-cv"). On 2 cores a fold costs what one refit costs (the forest about a minute, the CNN about
eleven).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.markdown import command_line, write_section
from services.training.calibration import calibration_split, fit_temperature
from services.training.cli import parse_override
from services.training.config import TrainingSettings
from services.training.data import PreparedData, prepare_data
from services.training.ensemble import ensemble_temperature, fit_weights
from services.training.families import get_family
from services.training.search import NOT_MODEL_PARAMS
from services.training.splits import split_train_test
from shared.core.conformal import fit_conformal
from shared.core.ensemble_spec import combine
from shared.core.temperature import apply_temperature

SECTION = "referral-cv"


@dataclass
class Scored:
    """One model's out-of-fold answers: for each image, whether its set covered the truth, the set's size, and
    whether the top class was right."""

    covered: np.ndarray
    size: np.ndarray
    right: np.ndarray
    seconds: float = 0.0
    folds: list[float] = field(default_factory=list)  # each fold's coverage

    @classmethod
    def empty(cls, count: int) -> Scored:
        return cls(np.zeros(count, bool), np.zeros(count, int), np.zeros(count, bool))


def _fit_fold(
    family_name: str, data: PreparedData, fit_idx: np.ndarray, seed: int, recipe: dict[str, object]
) -> tuple[object, object, int]:
    """The family fitted as a refit fits it, on ``fit_idx`` (less an early-stopping slice if it watches one)."""
    family = get_family(family_name, TrainingSettings())
    params = {**family.default_params(), **recipe, "seed": seed}
    size = int(params["image_size"])
    model_params = {key: value for key, value in params.items() if key not in NOT_MODEL_PARAMS}
    pixels, labels = data.train(size)[fit_idx], data.train_labels[fit_idx]
    validation = None
    if family.holds_out(model_params):
        keep, stop = split_train_test(labels, data.train_groups[fit_idx], 0.1, seed + 1)
        validation = (pixels[stop], labels[stop])
        pixels, labels = pixels[keep], labels[keep]
    fitted = family.fit(pixels, labels, model_params, family.contract(size, params.get("scaling")), validation)
    return family, fitted, size


def _score(scored: Scored, test_idx: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, sets: object,
           alpha: float) -> None:  # fmt: skip
    members = [sets.prediction_set(row, alpha) for row in probabilities]  # type: ignore[attr-defined]
    covered = np.array([label in m for m, label in zip(members, labels, strict=True)])
    scored.covered[test_idx] = covered
    scored.size[test_idx] = [len(m) for m in members]
    scored.right[test_idx] = probabilities.argmax(axis=1) == labels
    scored.folds.append(float(covered.mean()))


@dataclass
class Kept:
    """Calibrated probabilities kept for ``--save-probabilities``: out of fold for every image, and each fold's
    calibration slice (which image, which fold, what each model said)."""

    fold: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    test: dict[str, np.ndarray] = field(default_factory=dict)
    calibration_index: list[np.ndarray] = field(default_factory=list)
    calibration_fold: list[np.ndarray] = field(default_factory=list)
    calibration: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def arrays(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        kept = {"labels": labels, "fold": self.fold, "calibration_index": np.concatenate(self.calibration_index),
                "calibration_fold": np.concatenate(self.calibration_fold)}  # fmt: skip
        kept.update({f"test_{name}": values for name, values in self.test.items()})
        kept.update({f"calibration_{name}": np.concatenate(values) for name, values in self.calibration.items()})
        return kept


def cross_validate(
    data: PreparedData,
    families: list[str],
    folds: int,
    alpha: float,
    seed: int,
    recipes: dict[str, dict[str, object]] | None = None,
    kept: Kept | None = None,
) -> dict[str, Scored]:
    labels, groups = data.train_labels, data.train_groups
    recipes, kept = recipes or {}, kept if kept is not None else Kept()
    count = len(labels)
    results = {name: Scored.empty(count) for name in families}
    if len(families) > 1:
        results["ensemble"] = Scored.empty(count)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    kept.fold = np.zeros(count, int)
    for fold, (train_idx, test_idx) in enumerate(splitter.split(np.zeros(count), labels, groups)):
        kept.fold[test_idx] = fold
        fit_rel, cal_rel = calibration_split(labels[train_idx], groups[train_idx], seed)
        fit_idx, cal_idx = train_idx[fit_rel], train_idx[cal_rel]
        kept.calibration_index.append(cal_idx)
        kept.calibration_fold.append(np.full(len(cal_idx), fold))
        calibrated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in families:
            started = time.perf_counter()
            family, fitted, size = _fit_fold(name, data, fit_idx, seed, recipes.get(name, {}))
            cal = family.predict_native(fitted, data.train(size)[cal_idx])
            test = family.predict_native(fitted, data.train(size)[test_idx])
            temperature = fit_temperature(cal, labels[cal_idx])
            calibrated[name] = (apply_temperature(cal, temperature), apply_temperature(test, temperature))
            sets = fit_conformal(calibrated[name][0], labels[cal_idx])
            _score(results[name], test_idx, calibrated[name][1], labels[test_idx], sets, alpha)
            kept.test.setdefault(name, np.zeros((count, cal.shape[1]), np.float32))[test_idx] = calibrated[name][1]
            kept.calibration.setdefault(name, []).append(calibrated[name][0])
            results[name].seconds += time.perf_counter() - started
            print(f"fold {fold + 1}/{folds} {name}: coverage {results[name].folds[-1]:.4f}", flush=True)
        if len(families) > 1:
            members_cal = [calibrated[name][0] for name in families]
            weights, _ = fit_weights(members_cal, labels[cal_idx])
            temperature = ensemble_temperature(members_cal, weights, labels[cal_idx])
            cal = combine(members_cal, weights, temperature)
            test = combine([calibrated[name][1] for name in families], weights, temperature)
            _score(results["ensemble"], test_idx, test, labels[test_idx], fit_conformal(cal, labels[cal_idx]), alpha)
            kept.test.setdefault("ensemble", np.zeros((count, cal.shape[1]), np.float32))[test_idx] = test
            kept.calibration.setdefault("ensemble", []).append(cal)
    return results


def rate(successes: int, total: int) -> str:
    if total == 0:
        return "-"
    interval = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="wilson")
    return f"{successes / total:.2%} ({interval.low:.2%}-{interval.high:.2%})"


def table(results: dict[str, Scored], alpha: float) -> str:
    lines = [
        f"| model | coverage at alpha {alpha} (target >= {1 - alpha:.0%}) | mean set size (<= 1.05) | referred (<= 5%) "
        "| accuracy not referred (>= 99.7%) | accuracy | coverage by fold | minutes |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, scored in results.items():
        count = len(scored.covered)
        single = scored.size == 1
        lines.append(
            f"| {name} | {rate(int(scored.covered.sum()), count)} | {scored.size.mean():.3f} "
            f"| {rate(int((~single).sum()), count)} | {rate(int(scored.right[single].sum()), int(single.sum()))} "
            f"| {rate(int(scored.right.sum()), count)} | {', '.join(f'{c:.3f}' for c in scored.folds)} "
            f"| {scored.seconds / 60:.1f} |"
        )
    return "\n".join(lines)


def parse_recipes(items: list[str], families: list[str]) -> dict[str, dict[str, object]]:
    """``FAMILY.KEY=VALUE`` items (JSON values) as each family's parameters over its defaults; a family not
    measured, or a key its defaults do not have, is refused rather than silently ignored."""
    recipes: dict[str, dict[str, object]] = {}
    for item in items:
        target, value = parse_override(item)  # training's own KEY=VALUE reading (JSON values)
        family, dot, key = target.partition(".")
        if not dot or not key:
            raise SystemExit(f"--set {item!r}: expected FAMILY.KEY=VALUE, e.g. mobilenetv2.image_size=224")
        if family not in families:
            raise SystemExit(f"--set {item!r}: {family!r} is not one of --families ({', '.join(families)})")
        if key not in get_family(family, TrainingSettings()).default_params():
            raise SystemExit(f"--set {item!r}: {family} has no parameter {key!r}")
        recipes.setdefault(family, {})[key] = value
    return recipes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"))
    parser.add_argument("--families", default="rf")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--set",
        dest="recipe",
        action="append",
        default=[],
        metavar="FAMILY.KEY=VALUE",
        help="a family's parameter over its defaults, e.g. mobilenetv2.fine_tune_blocks=16",
    )
    parser.add_argument("--save-probabilities", type=Path, help="keep the calibrated probabilities (.npz)")
    parser.add_argument("--section", default=SECTION, help="the docs/benchmarks.md section it writes")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    families = [name.strip() for name in args.families.split(",") if name.strip()]
    recipes = parse_recipes(args.recipe, families)
    started = time.perf_counter()
    data = prepare_data(args.data, 0.0, args.seed, args.cache_dir)  # every image: the folds are the test sets
    kept = Kept()
    results = cross_validate(data, families, args.folds, args.alpha, args.seed, recipes, kept)
    if args.save_probabilities:
        args.save_probabilities.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save_probabilities, **kept.arrays(data.train_labels))
    body = (
        f"## Prediction sets and referral, cross-validated over every training image ({', '.join(families)})\n\n"
        f"`{command_line('benchmarks.referral', argv)}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {len(data.train_labels)} images, {args.folds} duplicate-aware folds, "
        f"{(time.perf_counter() - started) / 60:.1f} minutes). Every image scored once by models fitted without it "
        "or its duplicates; each family at its defaults (with what `--set` gives), calibrated and given conformal "
        "thresholds on the pipeline's calibration slice of the other folds. Intervals: 95% Wilson.\n\n"
        + table(results, args.alpha)
    )
    print(body)
    if not args.no_write:
        write_section(args.section, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
