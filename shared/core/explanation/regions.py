"""Label maps of a grayscale slice: 0 outside the head (never hidden, never reported), regions 1..R inside.

Importable only with the ``[explain]`` extra: it imports scikit-image (SLIC) and SciPy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import slic

DEFAULT_CELLS = 8
DEFAULT_NUM_SEGMENTS = 48
# SLIC on one channel scaled to [0, 1]: 0.1 follows tissue edges while keeping regions compact.
SLIC_COMPACTNESS = 0.1
# Pixels darker than this (after a light blur, on a 0..1 scale) are background, not tissue.
TISSUE_THRESHOLD = 0.06
# Bright specks apart from the head (noise, labels burnt into the image) smaller than this share of the head.
SPECK_FRACTION = 0.03
# A mask outside these shares of the image is no head outline (a flat or cropped image): all of it is head.
MIN_HEAD_FRACTION, MAX_HEAD_FRACTION = 0.05, 0.98
# Frames burnt into a scan sit in this band along its edge (a share of the longer side, at least EDGE_BAND px:
# the blur widens a frame by about two pixels).
EDGE_BAND_FRACTION, EDGE_BAND = 0.02, 4


def _gray(pixels: np.ndarray) -> np.ndarray:
    gray = np.asarray(pixels)
    if gray.ndim != 2:
        raise ValueError(f"expected one grayscale image (H, W), got {gray.dtype} {gray.shape}")
    return gray.astype(np.float64) / 255.0


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """The largest connected part of ``mask`` and the parts at least SPECK_FRACTION of its size."""
    parts, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    kept = sizes >= SPECK_FRACTION * sizes.max()
    return kept[parts]


def _filled(tissue: np.ndarray) -> np.ndarray:
    """``tissue`` with its holes filled and specks dropped. Holes are found with a thin band along the image's
    edge cleared, so a frame burnt into the image does not enclose (and fill) the background."""
    band = max(EDGE_BAND, round(EDGE_BAND_FRACTION * max(tissue.shape)))
    inner = np.zeros_like(tissue)
    inner[band:-band, band:-band] = True
    return _without_specks(tissue | ndimage.binary_fill_holes(tissue & inner))


def _is_outline(mask: np.ndarray) -> bool:
    return MIN_HEAD_FRACTION < float(mask.mean()) < MAX_HEAD_FRACTION


def head_mask(pixels: np.ndarray) -> np.ndarray:
    """Where the head is: tissue brighter than the background, holes (ventricles, dark lesions) filled, specks
    dropped. A background noisier than the tissue threshold gets a second try at half Otsu's threshold; the
    whole image is head when still no outline shows (the mask nearly empty or nearly full)."""
    blurred = ndimage.gaussian_filter(_gray(pixels), sigma=1.0)
    mask = _filled(blurred > TISSUE_THRESHOLD)
    if not _is_outline(mask) and blurred.max() > blurred.min():
        mask = _filled(blurred > max(TISSUE_THRESHOLD, 0.5 * float(threshold_otsu(blurred))))
    return mask if _is_outline(mask) else np.ones(mask.shape, dtype=bool)


def head_rim(mask: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """The head's outer band (skull and scalp): head pixels closer to the outside than ``fraction`` of the
    head's half-thickness (its deepest point's distance to the outside). The image's edge counts as outside."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    depth = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    deepest = float(depth.max())
    return mask & (depth <= fraction * deepest) if deepest else np.zeros(mask.shape, dtype=bool)


def dense_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..R without gaps, in the order of their old numbers; 0 stays 0."""
    values, inverse = np.unique(labels, return_inverse=True)
    shift = 0 if values[0] == 0 else 1
    return (inverse.reshape(labels.shape) + shift).astype(np.int32)


def grid_cells(head: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's row (as a column vector) and column (as a row vector) in a ``cells`` x ``cells`` grid over the
    bounding box of ``head`` (bool (H, W)); pixels outside the box belong to the nearest edge cell."""
    if cells < 1:
        raise ValueError(f"cells must be at least 1, got {cells}")
    rows, cols = np.nonzero(head)
    top, left = rows.min(), cols.min()
    height, width = rows.max() + 1 - top, cols.max() + 1 - left
    cell_row = np.clip((np.arange(head.shape[0]) - top) * cells // height, 0, cells - 1)
    cell_col = np.clip((np.arange(head.shape[1]) - left) * cells // width, 0, cells - 1)
    return cell_row[:, None], cell_col[None, :]


def grid_regions(pixels: np.ndarray, cells: int = DEFAULT_CELLS) -> np.ndarray:
    """A ``cells`` x ``cells`` grid over the head's bounding box, each cell cut to the head: int32 labels 0..R."""
    head = head_mask(pixels)
    cell_row, cell_col = grid_cells(head, cells)
    return dense_labels(np.where(head, cell_row * cells + cell_col + 1, 0))


def slic_regions(pixels: np.ndarray, num_segments: int = DEFAULT_NUM_SEGMENTS) -> np.ndarray:
    """SLIC superpixels of the grayscale slice inside the head, deterministic: int32 labels 0..R."""
    gray = _gray(pixels)
    head = head_mask(pixels)
    labels = slic(
        gray,
        n_segments=num_segments,
        compactness=SLIC_COMPACTNESS,
        sigma=0.5,
        channel_axis=None,
        mask=head,
        start_label=1,
    )
    return dense_labels(np.where(head, labels, 0))
