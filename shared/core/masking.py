"""Copies of a slice with regions hidden, the one perturbation every explanation method uses.

An explanation divides the slice into regions (a label map) and asks the model about copies in which some
regions are hidden. The label map is drawn once, at any resolution, and applied at each model's own input size
(nearest neighbour), so every model, and every member of an ensemble, sees its own resize of the one decoding,
exactly as ``/v1/predict`` feeds it, with the same regions hidden.

- Label 0 is never hidden: the background outside the head, which no explanation reports.
- Labels 1..R are the regions; ``keep`` is (copies, R), True where a region stays as it is.
- A hidden region becomes the ``fill``: ``grey`` (the mean of the regions, the default), ``blur`` (the head
  blurred within itself, so edges and texture go but brightness stays), or ``black`` (what LIME's own samples use).

No scikit-image or scikit-learn here: the inference service applies the masks itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Fill = Literal["blur", "grey", "black"]
FILLS: tuple[Fill, ...] = ("blur", "grey", "black")
# What explanations hide regions with unless asked otherwise: the head's mean grey. Chosen on training slices
# (never test ones): a blurred cell on the head's edge smears the skull's outline, and occlusion then ranked the
# rim first more often than its share of the head (docs/explanations.md).
DEFAULT_FILL: Fill = "grey"
# The blur's sigma as a fraction of the image side: 8 px at 224 px, removing a tumour's edges and texture.
BLUR_SIGMA_FRACTION = 1 / 28
# Most regions and copies one request may carry (label maps are uint16; a copy row is R bytes on the wire).
MAX_REGIONS = 1024
# The finest square grid whose cells all fit in MAX_REGIONS.
MAX_GRID_SIDE = 32
MAX_LABEL_SIDE = 1024


class MaskError(ValueError):
    """A label map or keep matrix that does not describe hideable regions."""


def labels_at(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The label map resized to (height, width) by nearest neighbour (pixel centres), labels unchanged."""
    source_h, source_w = labels.shape
    rows = np.minimum(((np.arange(height) + 0.5) * source_h / height).astype(np.intp), source_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * source_w / width).astype(np.intp), source_w - 1)
    return labels[rows[:, None], cols[None, :]]


def fill_image(pixels: np.ndarray, labels: np.ndarray, fill: Fill) -> np.ndarray:
    """What hidden pixels of ``pixels`` (uint8 (H, W)) become; ``labels`` at the same size."""
    if fill == "black":
        return np.zeros_like(pixels)
    if fill == "grey":
        inside = pixels[labels > 0]
        mean = float(inside.mean()) if inside.size else float(pixels.mean())
        return np.full_like(pixels, int(round(mean)))
    if fill == "blur":
        sigma = max(1.0, max(pixels.shape) * BLUR_SIGMA_FRACTION)
        inside = (labels > 0).astype(np.float32)
        if not inside.any():
            inside[:] = 1.0
        return _blurred_within(pixels, inside, sigma)
    raise MaskError(f"fill must be one of {', '.join(FILLS)}; got {fill!r}")


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) rows of Gaussian weights: ``matrix @ column`` blurs a column (zero outside the image)."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    return np.exp(-0.5 * (offsets / sigma) ** 2).astype(np.float32)


def _blurred_within(pixels: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of the pixels ``inside`` alone, normalised by how much of each neighbourhood is inside, so
    the dark background never bleeds into the head. Two matrix products a side: inference has no SciPy."""
    rows, cols = (_gaussian_matrix(side, sigma) for side in pixels.shape)
    blurred = rows @ (pixels.astype(np.float32) * inside) @ cols.T
    weight = rows @ inside @ cols.T
    return np.clip(np.rint(blurred / np.maximum(weight, 1e-6)), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class RegionMasks:
    """Which regions each copy keeps: ``labels`` (h, w) with 0..R, ``keep`` (copies, R) bool."""

    labels: np.ndarray
    keep: np.ndarray
    fill: Fill = DEFAULT_FILL

    def __post_init__(self) -> None:
        labels, keep = self.labels, self.keep
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
            raise MaskError(f"labels must be a 2-D integer map; got {labels.dtype} {labels.shape}")
        if max(labels.shape) > MAX_LABEL_SIDE:
            raise MaskError(f"labels may be at most {MAX_LABEL_SIDE} px a side; got {labels.shape}")
        if labels.min() < 0 or labels.max() > MAX_REGIONS:
            raise MaskError(f"labels must lie in 0..{MAX_REGIONS}; got {labels.min()}..{labels.max()}")
        if keep.ndim != 2 or keep.dtype != np.bool_ or keep.shape[0] == 0:
            raise MaskError(f"keep must be a non-empty 2-D bool matrix; got {keep.dtype} {keep.shape}")
        if keep.shape[1] != int(labels.max()):
            raise MaskError(f"keep has {keep.shape[1]} columns for {int(labels.max())} regions (labels 1..R)")
        if self.fill not in FILLS:
            raise MaskError(f"fill must be one of {', '.join(FILLS)}; got {self.fill!r}")

    @property
    def copies(self) -> int:
        return int(self.keep.shape[0])

    @property
    def regions(self) -> int:
        return int(self.keep.shape[1])

    def applied(self, pixels: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """Copies ``rows`` of ``pixels`` (uint8 (H, W), any model's size) with their regions hidden: (n, H, W)."""
        image = np.asarray(pixels, dtype=np.uint8)
        labels = labels_at(self.labels, *image.shape)
        filled = fill_image(image, labels, self.fill)
        chosen = self.keep[rows if rows is not None else slice(None)]
        # Column 0 stands for label 0, which every copy keeps.
        keep = np.concatenate([np.ones((len(chosen), 1), dtype=bool), chosen], axis=1)
        return np.where(keep[:, labels], image[None], filled[None])


def labels_png(labels: np.ndarray) -> bytes:
    """A label map as a lossless 16-bit grayscale PNG: how it travels to the inference service."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(labels, dtype=np.uint16)).save(out, format="PNG")
    return out.getvalue()


def labels_from_png(data: bytes) -> np.ndarray:
    """The label map in a PNG from ``labels_png`` (8- or 16-bit grayscale); MaskError for anything else."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode not in ("L", "I;16", "I"):
                raise MaskError(f"regions must be an 8- or 16-bit grayscale PNG; got {image.format} {image.mode}")
            if max(image.size) > MAX_LABEL_SIDE:
                raise MaskError(f"regions may be at most {MAX_LABEL_SIDE} px a side; got {image.size}")
            return np.asarray(image, dtype=np.int32)
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, MaskError):
            raise
        raise MaskError("regions is not a readable PNG") from exc


def keep_bytes(keep: np.ndarray) -> bytes:
    """A keep matrix (copies, R) as one byte per cell, row-major."""
    return np.ascontiguousarray(keep, dtype=np.uint8).tobytes()


def keep_from_bytes(data: bytes, regions: int) -> np.ndarray:
    """The keep matrix in ``keep_bytes``'s form for ``regions`` columns; MaskError when the bytes do not fit."""
    if regions < 1 or not data or len(data) % regions:
        raise MaskError(f"keep must hold one byte per region ({regions}) for each copy; got {len(data)} bytes")
    cells = np.frombuffer(data, dtype=np.uint8)
    if cells.max() > 1:
        raise MaskError("keep bytes must be 0 (hide) or 1 (keep)")
    return cells.reshape(-1, regions).astype(bool)
