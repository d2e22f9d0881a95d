"""The figures of ``benchmarks.explain_quality`` and their section of docs/benchmarks.md."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shared.core.masking import DEFAULT_FILL

# Issue 28's targets: the default method's deletion AUC at most this share of random orders' (CNN and ensemble,
# both fills); occlusion's seconds through the gateway.
RANDOM_SHARE_BOUND = 0.75
VERDICT_MODELS = ("cnn", "ensemble")
DEFAULT_METHOD = "occlusion"
SECONDS_BOUND = {"cnn": 1.0, "ensemble": 2.0}
FILL_NAMES = {"grey": "grey (the head's mean)", "blur": "blur"}
# Occlusion asked for the fill it is measured with (``fill=blur``) rather than explained with the default fill.
MATCHED = "occlusion-matched"


@dataclass
class Figures:
    """One model version's measurements: lists of values by key, e.g. ("deletion", "lime", "grey", "random")."""

    model: str
    version: str
    image_size: int
    images: int
    values: dict[tuple[str, ...], list[float]] = field(default_factory=lambda: defaultdict(list))
    # (method, image name) -> the in-process explanation's top supporting regions
    top5: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, key: tuple[str, ...], value: float) -> None:
        self.values[key].append(value)

    def mean(self, *key: str) -> float | None:
        found = self.values.get(key)
        return float(np.mean(found)) if found else None

    def percentile(self, q: float, *key: str) -> float | None:
        found = self.values.get(key)
        return float(np.percentile(found, q)) if found else None

    @property
    def methods(self) -> list[str]:
        return [method for method in ("occlusion", "lime") if ("regions", method) in self.values]


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def faithfulness_table(figures: list[Figures]) -> list[str]:
    lines = [
        "| model | method | fill | deletion AUC (lower is better) | random | ratio | insertion AUC (higher is "
        "better) | random | ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for found in figures:
        for method in found.methods:
            for fill in FILL_NAMES:
                cells = []
                for curve in ("deletion", "insertion"):
                    own, rand = found.mean(curve, method, fill, "method"), found.mean(curve, method, fill, "random")
                    cells += [_number(own), _number(rand), _number(_ratio(own, rand), 2)]
                lines.append(f"| {found.model} v{found.version} | {method} | {fill} | {' | '.join(cells)} |")
        for fill in FILL_NAMES:
            if found.mean("deletion", MATCHED, fill, "method") is None:
                continue
            cells = []
            for curve in ("deletion", "insertion"):
                own, rand = (
                    found.mean(curve, MATCHED, fill, "method"),
                    found.mean(curve, DEFAULT_METHOD, fill, "random"),
                )
                cells += [_number(own), _number(rand), _number(_ratio(own, rand), 2)]
            lines.append(
                f"| {found.model} v{found.version} | occlusion asked for fill={fill} | {fill} | {' | '.join(cells)} |"
            )
    return lines


def _stability(found: Figures, method: str) -> str:
    if method == "lime":
        lowest = min(found.values[("stability", "lime")])
        return f"{_number(found.mean('stability', 'lime'), 2)} (min {lowest:.2f})"
    same = found.values.get(("deterministic", "occlusion"), [])
    return f"no seed; same weights twice on {int(sum(same))}/{len(same)}"


def behaviour_table(figures: list[Figures]) -> list[str]:
    lines = [
        "| model | method | regions | top-5 stability (Jaccard across seeds 0/1/2) | top-5 area in the rim | rim's "
        "share of the head | images with a region outside the head | gateway's top 5 = in-process | LIME R^2 "
        "| median s | p90 s |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for found in figures:
        for method in found.methods:
            regions = found.values[("regions", method)]
            r2 = _number(found.mean("fit_r2", "lime"), 2) if method == "lime" else "-"
            lines.append(
                f"| {found.model} v{found.version} | {method} | {min(regions):.0f}-{max(regions):.0f} "
                f"| {_stability(found, method)} | {_number(found.mean('rim_top', method), 2)} "
                f"| {_number(found.mean('rim_head'), 2)} | {_number(found.mean('outside', method), 2)} "
                f"| {_number(found.mean('agrees', method), 2)} | {r2} "
                f"| {_number(found.percentile(50, 'seconds', method), 2)} "
                f"| {_number(found.percentile(90, 'seconds', method), 2)} |"
            )
    return lines


def _placement_verdicts(found: Figures) -> list[str]:
    """Where the default method's top regions lie: no more on the rim than the rim's share, never outside the head."""
    lines = []
    rim_top, rim_head = found.mean("rim_top", DEFAULT_METHOD), found.mean("rim_head")
    if rim_top is not None and rim_head is not None:
        lines.append(
            f"- {found.model}: {DEFAULT_METHOD}'s top-5 area in the rim {rim_top:.2f} vs the rim's share of the head "
            f"{rim_head:.2f}: {'met' if rim_top <= rim_head else 'NOT met'}."
        )
    if (outside := found.mean("outside", DEFAULT_METHOD)) is not None:
        lines.append(
            f"- {found.model}: images with a region outside the head {outside:.2f}: "
            f"{'met' if outside == 0 else 'NOT met'}."
        )
    return lines


def verdicts(figures: list[Figures]) -> list[str]:
    """Issue 28's done-when, figure by figure."""
    lines = []
    for found in (f for f in figures if f.model in VERDICT_MODELS):
        for fill in FILL_NAMES:
            own = found.mean("deletion", DEFAULT_METHOD, fill, "method")
            rand = found.mean("deletion", DEFAULT_METHOD, fill, "random")
            if own is None or rand is None:
                continue
            bound = RANDOM_SHARE_BOUND * rand
            lime_note = ""
            if (lime := found.mean("deletion", "lime", fill, "method")) is not None:
                better = "lower: more faithful by this measure" if lime < own else "not lower"
                lime_note = f"; LIME's {lime:.3f} ({better})"
            lines.append(
                f"- {found.model}, {fill} fill: default method ({DEFAULT_METHOD}) deletion AUC {own:.3f} vs "
                f"{RANDOM_SHARE_BOUND} x random {bound:.3f}: {'met' if own <= bound else 'NOT met'}{lime_note}."
            )
            if (matched := found.mean("deletion", MATCHED, fill, "method")) is not None:
                lines.append(
                    f"- {found.model}, {fill} fill, {DEFAULT_METHOD} asked for fill={fill}: deletion AUC {matched:.3f} "
                    f"vs {bound:.3f}: {'met' if matched <= bound else 'NOT met'}."
                )
        lines.extend(_placement_verdicts(found))
        median = found.percentile(50, "seconds", DEFAULT_METHOD)
        if median is not None and found.model in SECONDS_BOUND:
            bound_s = SECONDS_BOUND[found.model]
            lines.append(
                f"- {found.model}: {DEFAULT_METHOD} through the gateway, median {median:.2f} s vs {bound_s:.0f} s: "
                f"{'met' if median <= bound_s else 'NOT met'}."
            )
    return lines


def _occlusion_text(grid: str) -> str:
    """``8x2`` -> how occlusion ran: a patch one cell of 8 x 8, on that grid and on it shifted by half a cell."""
    cells, shifts = (int(part) for part in grid.split("x"))
    shifted = (
        ""
        if shifts == 1
        else f", on that grid and on copies of it shifted by steps of 1/{shifts} of a cell ({shifts} grids)"
    )
    return f"occlusion: a patch one cell of a grid of {cells} x {cells} over the head{shifted}"


def render(figures: list[Figures], heading: Mapping[str, str]) -> str:
    versions = ", ".join(f"{f.model} v{f.version} ({f.image_size} px)" for f in figures)
    lines = [
        "## Explanation quality (issue 28)",
        "",
        f"`{heading['command']}`, {heading['when']}, {heading['minutes']} minutes. Models: {versions}"
        f"{'; the ensemble pins ' + heading['pinned'] if heading.get('pinned') else ''}. Images: "
        f"{heading['images']}. Explanations ({_occlusion_text(heading['occlusion'])}; LIME, measured "
        f"on {heading['lime'] or 'no model'}: 500 samples, 48 SLIC superpixels, seeds 0/1/2; both with the "
        f"{DEFAULT_FILL} fill, the default), computed in process against the served model (its predict-masked "
        "endpoint). Faithfulness: the head's pixels ranked by their region's weight (LIME: seed 0), 0%, 5%, ..., "
        "50% of them hidden (deletion) "
        "or, from the whole head hidden, revealed (insertion); AUC = mean over the 11 steps of p(class) / p(class | "
        "intact image), for each fill named (grey: the head's mean). Random: the same for three random orders of "
        'the method\'s own regions (seeds 0, 1, 2); ratio = method / random. "Occlusion asked for fill=blur": the '
        "explanation computed with the blur fill instead of the default, measured with blur.",
        "",
        *faithfulness_table(figures),
        "",
        "Rim: `head_rim` (the outer fifth of the head's depth: skull and scalp); top-5 area in the rim is the "
        "share of the top-5 supporting regions' pixels inside it (LIME: over the three seeds), to compare with the "
        "rim's share of the head. Seconds: `POST /v1/explain` through the gateway, one call per image after one "
        "warm-up (LIME: seed 0).",
        "",
        *behaviour_table(figures),
        "",
        *verdicts(figures),
    ]
    return "\n".join(lines)
