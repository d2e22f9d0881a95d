"""The measurements of ``benchmarks.explain_quality`` for one model version: explanations computed in this process
against the served model (predict-masked), and explanations timed through the gateway."""

from __future__ import annotations

import itertools
import mimetypes
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.explain_faithfulness import measure_order, random_orders, strongest_first
from benchmarks.explain_quality_report import MATCHED, Figures
from services.explainer.explaining import masked_predictor
from services.explainer.inference import InferenceBatchClient
from shared.core.contract import PreprocessingContract
from shared.core.explanation.lime import lime
from shared.core.explanation.occlusion import DEFAULT_SHIFTS, occlusion
from shared.core.explanation.regions import DEFAULT_CELLS, head_mask, head_rim
from shared.core.explanation.result import Explanation, PredictMasked, top_overlap
from shared.core.imaging import decode_grayscale, resize_gray
from shared.core.masking import DEFAULT_FILL, Fill, RegionMasks

LIME_SEEDS = (0, 1, 2)
RANDOM_SEEDS = (0, 1, 2)
FILLS: tuple[Fill, ...] = ("grey", "blur")
TOP = 5
# Copies per predict-masked request: a LIME explanation's 500 in one.
MAX_COPIES = 512


@dataclass(frozen=True)
class OcclusionGrid:
    """Occlusion's patch (one cell of a ``cells`` x ``cells`` grid) and its shifted grids, as the explainer runs it."""

    cells: int = DEFAULT_CELLS
    shifts: int = DEFAULT_SHIFTS


@dataclass(frozen=True)
class ModelUnderTest:
    model: str
    version: str
    contract: PreprocessingContract
    lime: bool = True
    grid: OcclusionGrid = OcclusionGrid()

    @property
    def methods(self) -> tuple[str, ...]:
        return ("occlusion", "lime") if self.lime else ("occlusion",)


class MaskedPredictor:
    """A ``PredictMasked`` over HTTP: copies of one upload classified by the inference service's predict-masked,
    through the explainer's own client, so they are asked for exactly as the explainer asks; counts the copies."""

    def __init__(self, http: httpx.Client, model: ModelUnderTest, path: Path) -> None:
        self.upload = (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self._predict = masked_predictor(
            InferenceBatchClient(http), model.model, model.version, self.upload[1], None, MAX_COPIES
        )
        self.copies = 0

    def __call__(self, masks: RegionMasks) -> np.ndarray:
        answer = self._predict(masks)
        self.copies += masks.copies
        return answer


def top_segments(explanation: Explanation) -> list[int]:
    return [region.segment for region in explanation.supporting(TOP)]


def rim_share(explanation: Explanation, rim: np.ndarray) -> float | None:
    """The share of the top supporting regions' area inside the rim (None: no supporting region)."""
    area = np.isin(explanation.labels, top_segments(explanation))
    return float((area & rim).sum() / area.sum()) if area.any() else None


def faithfulness(
    figures: Figures, method: str, explanation: Explanation, head: np.ndarray, predict: PredictMasked
) -> None:
    """Deletion and insertion AUCs of the method's ranking and of random orders of its regions, each fill."""
    labels = explanation.labels
    ranked_head = head | (labels > 0)
    orders = {"method": [strongest_first(explanation.weights)]}
    orders["random"] = random_orders(sorted(explanation.weights), RANDOM_SEEDS)
    for fill, (kind, kind_orders) in itertools.product(FILLS, orders.items()):
        found = [measure_order(predict, labels, ranked_head, o, explanation.label_index, fill) for o in kind_orders]
        figures.add(("deletion", method, fill, kind), float(np.mean([c.deletion_auc for c in found])))
        figures.add(("insertion", method, fill, kind), float(np.mean([c.insertion_auc for c in found])))


def matched_fill_faithfulness(
    figures: Figures,
    pixels: np.ndarray,
    head: np.ndarray,
    predict: PredictMasked,
    class_names: Sequence[str],
    grid: OcclusionGrid,
) -> None:
    """Occlusion asked for each other fill (``fill=blur``), measured with that fill. Its regions are the default
    explanation's, so the random orders (and their AUCs) are the same as for the default one."""
    for fill in (f for f in FILLS if f != DEFAULT_FILL):
        explanation = occlusion(pixels, predict, class_names, fill=fill, cells=grid.cells, shifts=grid.shifts)
        order = strongest_first(explanation.weights)
        found = measure_order(predict, explanation.labels, head | (explanation.labels > 0), order,
                              explanation.label_index, fill)  # fmt: skip
        figures.add(("deletion", MATCHED, fill, "method"), found.deletion_auc)
        figures.add(("insertion", MATCHED, fill, "method"), found.insertion_auc)


def measure_image(
    figures: Figures,
    name: str,
    pixels: np.ndarray,
    predict: PredictMasked,
    class_names: Sequence[str],
    with_lime: bool,
    grid: OcclusionGrid = OcclusionGrid(),
) -> None:
    """Every in-process figure of one image (``pixels`` at the model's size, ``name`` its file's)."""
    head = head_mask(pixels)
    rim = head_rim(head)
    figures.add(("rim_head",), float(rim.sum() / head.sum()))
    explained = {"occlusion": [occlusion(pixels, predict, class_names, cells=grid.cells, shifts=grid.shifts)]}
    again = occlusion(pixels, predict, class_names, cells=grid.cells, shifts=grid.shifts)
    figures.add(("deterministic", "occlusion"), float(again.weights == explained["occlusion"][0].weights))
    if with_lime:
        explained["lime"] = [lime(pixels, predict, class_names, seed=seed) for seed in LIME_SEEDS]
        pairs = itertools.combinations(explained["lime"], 2)
        figures.add(("stability", "lime"), float(np.mean([top_overlap(a, b, TOP) for a, b in pairs])))
        for explanation in explained["lime"]:
            figures.add(("fit_r2", "lime"), float(explanation.fit_r2 or 0.0))
    for method, explanations in explained.items():
        first = explanations[0]
        figures.top5[(method, name)] = top_segments(first)
        figures.add(("regions", method), float(first.num_regions))
        figures.add(("outside", method), float(any(((e.labels > 0) & ~head).any() for e in explanations)))
        for explanation in explanations:
            if (share := rim_share(explanation, rim)) is not None:
                figures.add(("rim_top", method), share)
        faithfulness(figures, method, first, head, predict)
    matched_fill_faithfulness(figures, pixels, head, predict, class_names, grid)


def measure_model(http: httpx.Client, model: ModelUnderTest, images: list[Path]) -> Figures:
    """The in-process figures of every image, each explanation asking the served model."""
    figures = Figures(model.model, model.version, model.contract.image_size, len(images))
    started = time.perf_counter()
    for count, path in enumerate(images, start=1):
        pixels = resize_gray(decode_grayscale(path.read_bytes()), model.contract.image_size)
        predict = MaskedPredictor(http, model, path)
        measure_image(figures, path.name, pixels, predict, model.contract.class_names, model.lime, model.grid)
        spent = time.perf_counter() - started
        print(
            f"{model.model} v{model.version}: {count}/{len(images)} images in process, {spent:.0f} s "
            f"(about {spent / count * (len(images) - count):.0f} s to go)",
            flush=True,
        )
    return figures


def explain(gateway: httpx.Client, model: ModelUnderTest, method: str, path: Path) -> tuple[float, dict]:
    """One explanation through the gateway: (wall-clock seconds, answer)."""
    upload = (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    params = {"model": model.model, "version": model.version, "method": method, "num_regions": TOP}
    started = time.perf_counter()
    response = gateway.post("/v1/explain", params=params, files={"file": upload})
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"/v1/explain answered {response.status_code}: {response.text[:500]}")
    answer = response.json()
    if answer["method"] != method:  # a gateway that drops the parameter would time the default method
        raise RuntimeError(f"/v1/explain?method={method} answered an explanation by {answer['method']}")
    return seconds, answer


def time_gateway(gateway: httpx.Client, model: ModelUnderTest, images: list[Path], figures: Figures) -> None:
    """Seconds per explanation of each method through the gateway, after one warm-up call; and whether the
    gateway's top regions are the ones found in process (the same model, method and defaults)."""
    for method in model.methods:
        explain(gateway, model, method, images[0])
        for path in images:
            seconds, answer = explain(gateway, model, method, path)
            figures.add(("seconds", method), seconds)
            served = [region["segment"] for region in answer["regions"]]
            figures.add(("agrees", method), float(served == figures.top5[(method, path.name)]))
        print(f"{model.model} v{model.version}: {method} timed through the gateway", flush=True)
