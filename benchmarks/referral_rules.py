"""Referral rules compared on kept out-of-fold probabilities:
`python -m benchmarks.referral_rules --probabilities FILE.npz [--alpha 0.05] [--delta 0.1]`.

``FILE.npz`` is what ``python -m benchmarks.referral --save-probabilities`` keeps: every image's calibrated
probabilities from models fitted without it, and each fold's calibration slice's. Each rule is fitted on a fold's
calibration slice only and judged on that fold, so nothing here is fitted on the images it is scored on:
- **LAC** (what the services answer, ``shared.core.conformal``): the set at ``alpha``; referred unless one class;
- **LAC, training-conditional**: the same sets with the calibration quantile raised so that coverage is at least
  ``1 - alpha`` with probability ``1 - delta`` over the calibration draw (the k-th smallest score, the smallest k
  whose Beta(k, n + 1 - k) coverage falls below ``1 - alpha`` with probability at most ``delta``);
- **LAC, or the networks disagree** (the ensemble): also referred when the CNN's and MobileNetV2's top classes differ;
- **lowest top probability**: referred when the top class's probability is below the calibration slice's 5%
  quantile of it (a referral budget, no set).
The ensemble is also rebuilt from its members' kept probabilities with training's current rule (its weights and
its temperature, ``services.training.ensemble``, on each fold's calibration slice): the row "ensemble (current
weights)", beside the kept "ensemble" (the weights of the run that kept them). Each model's expected calibration
error is given too. Writes its table to docs/benchmarks.md (section "referral-rules").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import beta

from benchmarks.markdown import command_line, write_section
from benchmarks.referral import rate
from services.training.calibration import expected_calibration_error
from services.training.ensemble import ensemble_temperature, fit_weights
from shared.core.conformal import fit_conformal
from shared.core.ensemble_spec import combine

SECTION = "referral-rules"
NETWORKS = ("cnn", "mobilenetv2")
REWEIGHED = "ensemble (current weights)"


def conditional_threshold(scores: np.ndarray, alpha: float, delta: float) -> float:
    """The nonconformity threshold whose coverage is >= 1 - alpha with probability >= 1 - delta (n scores)."""
    ordered, n = np.sort(scores), len(scores)
    for k in range(1, n + 1):
        if beta.cdf(1 - alpha, k, n + 1 - k) <= delta:
            return float(ordered[k - 1])
    return 1.0


Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _sets(threshold: float, test: np.ndarray) -> np.ndarray:
    return test >= 1.0 - threshold - 1e-12


def lac(alpha: float) -> Rule:
    def rule(calibration: np.ndarray, labels: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        members = _sets(fit_conformal(calibration, labels).threshold(alpha)[1], test)
        return members, members.sum(axis=1) != 1

    return rule


def conditional_lac(alpha: float, delta: float) -> Rule:
    def rule(calibration: np.ndarray, labels: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = 1.0 - calibration[np.arange(len(labels)), labels]
        members = _sets(conditional_threshold(scores, alpha, delta), test)
        return members, members.sum(axis=1) != 1

    return rule


def lowest_top(budget: float) -> Rule:
    def rule(calibration: np.ndarray, labels: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        members = test == test.max(axis=1, keepdims=True)
        return members, test.max(axis=1) < np.quantile(calibration.max(axis=1), budget)

    return rule


def judge(kept: dict[str, np.ndarray], model: str, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """(covered, referred) for every image, the rule fitted fold by fold on that fold's calibration slice."""
    labels, fold = kept["labels"], kept["fold"]
    test = kept[f"test_{model}"]
    covered, referred = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
    for k in np.unique(fold):
        held, slice_ = fold == k, kept["calibration_fold"] == k
        calibration = kept[f"calibration_{model}"][slice_]
        members, refer = rule(calibration, labels[kept["calibration_index"][slice_]], test[held])
        covered[held] = members[np.arange(held.sum()), labels[held]]
        referred[held] = refer
    return covered, referred


def row(name: str, kept: dict[str, np.ndarray], model: str, covered: np.ndarray, referred: np.ndarray) -> str:
    right = kept[f"test_{model}"].argmax(axis=1) == kept["labels"]
    answered = ~referred
    by_fold = ", ".join(f"{covered[kept['fold'] == k].mean():.3f}" for k in np.unique(kept["fold"]))
    return (
        f"| {model} | {name} | {rate(int(covered.sum()), len(covered))} | {by_fold} "
        f"| {rate(int(referred.sum()), len(referred))} | {rate(int(right[answered].sum()), int(answered.sum()))} "
        f"| {int((referred & ~right).sum())} of {int((~right).sum())} |"
    )


def reweighed(kept: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The kept arrays and the ensemble rebuilt from its members with ``fit_weights`` fold by fold; the weights
    each fold chose under ``weights_<fold>``."""
    members = [key.removeprefix("test_") for key in kept if key.startswith("test_") and "ensemble" not in key]
    labels, fold = kept["labels"], kept["fold"]
    test = np.zeros_like(kept[f"test_{members[0]}"])
    calibration = np.zeros_like(kept[f"calibration_{members[0]}"])
    extra: dict[str, np.ndarray] = {}
    for k in np.unique(fold):
        held, slice_ = fold == k, kept["calibration_fold"] == k
        members_cal = [kept[f"calibration_{m}"][slice_] for m in members]
        slice_labels = labels[kept["calibration_index"][slice_]]
        weights, _ = fit_weights(members_cal, slice_labels)
        temperature = ensemble_temperature(members_cal, weights, slice_labels)
        test[held] = combine([kept[f"test_{m}"][held] for m in members], weights, temperature)
        calibration[slice_] = combine(members_cal, weights, temperature)
        extra[f"weights_{k}"] = weights
    return {**kept, f"test_{REWEIGHED}": test, f"calibration_{REWEIGHED}": calibration, **extra}


def table(kept: dict[str, np.ndarray], alpha: float, delta: float) -> str:
    models = [key.removeprefix("test_") for key in kept if key.startswith("test_")]
    lines = [
        "| model | rule | coverage (sets) | coverage by fold | referred | accuracy not referred | mistakes referred |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for model in models:
        covered, referred = judge(kept, model, lac(alpha))
        lines.append(row(f"LAC, alpha {alpha}", kept, model, covered, referred))
        plain_referred = referred
        covered, referred = judge(kept, model, conditional_lac(alpha, delta))
        lines.append(row(f"LAC, training-conditional (delta {delta})", kept, model, covered, referred))
        if model.startswith("ensemble") and all(f"test_{name}" in kept for name in NETWORKS):
            first, second = (kept[f"test_{name}"].argmax(axis=1) for name in NETWORKS)
            covered, _ = judge(kept, model, lac(alpha))
            lines.append(row("LAC, or the networks disagree", kept, model, covered, plain_referred | (first != second)))
        covered, referred = judge(kept, model, lowest_top(0.05))
        lines.append(row("top probability below the slice's 5% quantile", kept, model, covered, referred))
    return "\n".join(lines)


def _calibration_line(kept: dict[str, np.ndarray]) -> str:
    models = [key.removeprefix("test_") for key in kept if key.startswith("test_")]
    errors = ", ".join(f"{m} {expected_calibration_error(kept[f'test_{m}'], kept['labels']):.4f}" for m in models)
    return f"Expected calibration error of the out-of-fold probabilities: {errors}."


def _weights_line(kept: dict[str, np.ndarray]) -> str:
    folds = sorted(key for key in kept if key.startswith("weights_"))
    if not folds:
        return ""
    members = [key.removeprefix("test_") for key in kept if key.startswith("test_") and "ensemble" not in key]
    chosen = "; ".join(
        f"fold {key.removeprefix('weights_')}: "
        + ", ".join(f"{m} {w:.2f}" for m, w in zip(members, kept[key], strict=True))
        for key in folds
    )
    return f"The current weights rule chose: {chosen}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probabilities", type=Path, required=True, help="a --save-probabilities file")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    with np.load(args.probabilities) as stored:
        kept = {key: stored[key] for key in stored.files}
    if sum(key.startswith("test_") and "ensemble" not in key for key in kept) > 1:
        kept = reweighed(kept)
    body = (
        f"## Referral rules on out-of-fold probabilities (`{command_line('benchmarks.referral_rules', argv)}`)\n\n"
        f"{len(kept['labels'])} images, {len(np.unique(kept['fold']))} folds; each rule fitted on a fold's calibration "
        "slice and judged on that fold. Intervals: 95% Wilson. "
        + _weights_line(kept)
        + " "
        + _calibration_line(kept)
        + "\n\n"
        + table(kept, args.alpha, args.delta)
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
