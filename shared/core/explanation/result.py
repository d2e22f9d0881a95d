"""What an explanation answers: each region's weight for the explained class, and the regions' place and size."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from shared.core.masking import Fill, RegionMasks

# Copies of one slice with regions hidden -> class probabilities (copies, classes), in the keep matrix's row order.
PredictMasked = Callable[[RegionMasks], np.ndarray]

DEFAULT_NUM_REGIONS = 5


@dataclass(frozen=True)
class Region:
    """One region of the head and its weight for the explained class (positive: supports it)."""

    segment: int
    weight: float
    area_fraction: float
    # x0, y0, x1, y1 as fractions of the image's width and height, so they hold at any resolution.
    bbox: tuple[float, float, float, float]


@dataclass
class Explanation:
    """One method's answer for one image and one class; ``weights`` has every region 1..R of ``labels``."""

    method: str
    fill: Fill
    label_index: int
    class_names: tuple[str, ...]
    probabilities: np.ndarray  # the model's answer for the image itself
    labels: np.ndarray  # the label map the regions were drawn on: 0 outside the head, 1..R
    weights: dict[int, float]
    num_samples: int  # copies the model classified
    seed: int | None
    fit_r2: float | None = None
    intercept: float | None = None
    local_prediction: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.class_names[self.label_index]

    @property
    def predicted_label(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def num_regions(self) -> int:
        return len(self.weights)

    def ranked(self) -> list[int]:
        """Regions by decreasing absolute weight (ties: lower segment number first)."""
        return sorted(self.weights, key=lambda s: (-abs(self.weights[s]), s))

    def supporting(self, count: int | None = DEFAULT_NUM_REGIONS) -> list[Region]:
        """Up to ``count`` regions with weight > 0 (None: all), strongest first."""
        chosen = sorted((s for s, w in self.weights.items() if w > 0), key=lambda s: (-self.weights[s], s))
        return self.regions(chosen[:count])

    def opposing(self, count: int | None = DEFAULT_NUM_REGIONS) -> list[Region]:
        """Up to ``count`` regions with weight < 0 (None: all), most negative first."""
        chosen = sorted((s for s, w in self.weights.items() if w < 0), key=lambda s: (self.weights[s], s))
        return self.regions(chosen[:count])

    def regions(self, segments: Sequence[int]) -> list[Region]:
        """``segments`` with their weight, share of the image and bounding box, in the order given."""
        height, width = self.labels.shape
        areas = np.bincount(self.labels.ravel(), minlength=self.num_regions + 1)
        boxes = ndimage.find_objects(self.labels)
        found = []
        for segment in segments:
            rows, cols = boxes[segment - 1]
            bbox = (
                round(cols.start / width, 4),
                round(rows.start / height, 4),
                round(cols.stop / width, 4),
                round(rows.stop / height, 4),
            )
            area = round(float(areas[segment]) / (width * height), 4)
            found.append(Region(int(segment), float(self.weights[segment]), area, bbox))
        return found


def checked_probabilities(probabilities: np.ndarray, copies: int, num_classes: int) -> np.ndarray:
    """A predictor's answer as float64 (copies, classes); ValueError when it answered another shape."""
    answer = np.asarray(probabilities, dtype=np.float64)
    if answer.shape != (copies, num_classes):
        raise ValueError(f"the predictor answered {answer.shape} probabilities, expected ({copies}, {num_classes})")
    return answer


def checked_image(pixels: np.ndarray) -> np.ndarray:
    """One uint8 grayscale image (H, W); ValueError for anything else."""
    image = np.asarray(pixels)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected one uint8 grayscale image (H, W), got {image.dtype} {image.shape}")
    return image


def chosen_label(label: int | None, probabilities: np.ndarray) -> int:
    """The class explained: ``label`` when given (an index into the classes), else the predicted one."""
    if label is None:
        return int(np.argmax(probabilities))
    if not 0 <= label < len(probabilities):
        raise ValueError(f"label must be a class index 0..{len(probabilities) - 1}, got {label}")
    return label


def top_overlap(a: Explanation, b: Explanation, count: int = DEFAULT_NUM_REGIONS) -> float:
    """Jaccard overlap of two explanations' top ``count`` supporting regions (same image and label map)."""
    first = {region.segment for region in a.supporting(count)}
    second = {region.segment for region in b.supporting(count)}
    union = first | second
    return len(first & second) / len(union) if union else 1.0


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading), rounded for an answer."""
    return round((time.perf_counter() - started) * 1000.0, 2)
