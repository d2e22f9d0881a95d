"""What the guard against non-MRI input sees of an upload, defined once for training (fit) and inference (score).

An upload becomes three arrays, the three inputs of the guard's ONNX graph (docs/ood-guard.md):
- ``pixels``: the 32x32 grayscale thumbnail, exactly as training decodes every image (``shared.core.imaging``:
  bounded decoding, EXIF orientation, DICOM display pipeline), as float32 in [0, 1], shape (N, 1024);
- ``features``: a few statistics no thumbnail PCA sees (``FEATURE_NAMES``), shape (N, F). The strongest is colour:
  an MRI slice is gray even when stored as an RGB JPEG (R = G = B), a photo is not, and the grayscale decoding
  throws that away; so the upload is decoded a second time, in colour, to a small 64x64 RGB thumbnail (a JPEG
  at 1/8 scale by its own decoder: well under a millisecond);
- ``colour`` (v4): that 64x64 colour thumbnail itself, (N, 64, 64, 3) in 0-255, for the graph's texture detector.

``GUARD_INPUT_KIND`` names this definition; the guard's ONNX metadata carries the kind it was fitted on, and
inference refuses a guard of another kind (it would be scored on the wrong input) instead of mis-scoring.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.core.decoding import decode_slot
from shared.core.dicom import is_dicom
from shared.core.imaging import decode_grayscale, resize_gray

# Bump when anything below changes what the guard is fed: a guard fitted on another kind is refused.
GUARD_INPUT_KIND = "gray32-colour64-v4"
# The ONNX graph's second input (its first is shared.kit.schemas.GUARD_INPUT_NAME, the thumbnail's pixels).
GUARD_FEATURES_INPUT_NAME = "features"
# Its third (v4): the colour thumbnail itself, float32 (N, COLOUR_SIZE, COLOUR_SIZE, 3) in 0-255, which the
# graph's texture detector reads through a pretrained convolutional network.
GUARD_COLOUR_INPUT_NAME = "colour"
# The grayscale thumbnail's side: a slice's layout (skull ring, dark background, symmetry) survives at 32 px.
THUMBNAIL_SIZE = 32
# The colour thumbnail's side: enough pixels for a colour statistic and a fine-texture one.
COLOUR_SIZE = 64
# The 2-pixel ring whose brightness is a feature: slices sit on a black background.
BORDER_PIXELS = 2
# Below this (of 1) a pixel is background: an MRI slice's black surround.
DARK_LEVEL = 0.08
# A pixel between these (of 1) is mid-gray: photos and pages have many, a slice's tissue fewer.
MID_GRAY = (0.3, 0.7)
# Modes whose pixels are one high-depth channel (no colour): stretched to 8 bits like the grayscale decoding does.
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA")


@dataclass(frozen=True)
class GuardInput:
    """The guard's three inputs for N images."""

    pixels: np.ndarray  # (N, THUMBNAIL_SIZE**2) float32 in [0, 1]
    features: np.ndarray  # (N, len(FEATURE_NAMES)) float32
    colours: np.ndarray  # (N, COLOUR_SIZE, COLOUR_SIZE, 3) uint8

    def part(self, mask: np.ndarray) -> GuardInput:
        """The rows ``mask`` selects (a boolean mask or indices)."""
        return GuardInput(self.pixels[mask], self.features[mask], self.colours[mask])

    def colour_input(self) -> np.ndarray:
        """The colour thumbnails as the graph's third input takes them: float32 in 0-255."""
        return self.colours.astype(np.float32)


def stacked(inputs: Sequence[GuardInput]) -> GuardInput:
    """Several GuardInputs as one, rows in order."""
    return GuardInput(
        *(np.concatenate([getattr(i, name) for i in inputs]) for name in ("pixels", "features", "colours"))
    )


def colour_thumbnail(data: bytes) -> np.ndarray:
    """An image's (COLOUR_SIZE, COLOUR_SIZE, 3) uint8 RGB thumbnail (transparent pixels black, as in the grayscale
    decoding). Call it on bytes ``decode_grayscale`` has accepted: that one checks the size limit and the format.
    Orientation is ignored: every statistic taken from it is the same in any orientation."""
    with Image.open(io.BytesIO(data)) as image, decode_slot():
        image.draft(image.mode, (COLOUR_SIZE * 2, COLOUR_SIZE * 2))  # JPEG: decoded at up to 1/8 scale
        image.load()
        factor = max(image.size) // (COLOUR_SIZE * 4)
        if factor > 1 and image.mode not in ("1", "P"):  # a large PNG or TIFF: reduced in its own mode first
            image = image.reduce(factor)
        return np.asarray(_as_rgb(image).resize((COLOUR_SIZE, COLOUR_SIZE), Image.Resampling.BILINEAR))


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode in _TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def decode_colour(data: bytes, frame: int | None = None) -> np.ndarray:
    """An upload's colour thumbnail alone (training has the gray thumbnails in its cache already)."""
    if is_dicom(data):
        return _gray_as_colour(decode_grayscale(data, frame))
    return colour_thumbnail(data)


def _gray_as_colour(gray: Image.Image) -> np.ndarray:
    return np.asarray(gray.convert("RGB").resize((COLOUR_SIZE, COLOUR_SIZE), Image.Resampling.BILINEAR))


def decode_guard_images(
    data: bytes, frame: int | None = None, gray: Image.Image | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes to (gray thumbnail (S, S) uint8, colour thumbnail (C, C, 3) uint8); ``gray``: the file's
    ``decode_grayscale`` when the caller holds it already (the model's input is made from the same one).

    DICOM: the display pipeline's gray frame serves for both (it has no colour once displayed)."""
    gray = decode_grayscale(data, frame) if gray is None else gray
    thumbnail = resize_gray(gray, THUMBNAIL_SIZE)
    if is_dicom(data):  # decoded once: its display pipeline is the costly part
        return thumbnail, _gray_as_colour(gray)
    return thumbnail, colour_thumbnail(data)


def guard_input(data: bytes, frame: int | None = None, gray: Image.Image | None = None) -> GuardInput:
    """An upload's guard input (one image); ``gray``: see ``decode_guard_images``."""
    thumbnail, colour = decode_guard_images(data, frame, gray)
    return guard_input_of(thumbnail[np.newaxis], colour[np.newaxis])


def guard_input_of(thumbnails: np.ndarray, colours: np.ndarray) -> GuardInput:
    """Decoded thumbnails (N, S, S) uint8 and colour thumbnails (N, C, C, 3) uint8 to the guard's input."""
    pixels = thumbnails.reshape(len(thumbnails), -1).astype(np.float32) / 255.0
    return GuardInput(pixels, image_features(thumbnails, colours), np.asarray(colours, dtype=np.uint8))


def _ring(size: int, width: int) -> np.ndarray:
    ring = np.zeros((size, size), dtype=bool)
    ring[:width], ring[-width:], ring[:, :width], ring[:, -width:] = True, True, True, True
    return ring


def image_features(thumbnails: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The statistics of ``FEATURE_NAMES`` for N images, float32 (N, F)."""
    gray = thumbnails.astype(np.float64) / 255.0
    colour = colours.astype(np.float64) / 255.0
    n = len(gray)
    flat = gray.reshape(n, -1)
    # Chroma: how far a pixel's channels are apart (0 for any gray pixel, whatever its brightness).
    chroma = (colour.max(axis=-1) - colour.min(axis=-1)).reshape(n, -1)
    fine = colour.mean(axis=-1)
    columns = {
        "chroma_mean": chroma.mean(axis=1),
        "border": gray[:, _ring(gray.shape[1], BORDER_PIXELS)].mean(axis=1),
        "dark_fraction": (flat < DARK_LEVEL).mean(axis=1),
        "asymmetry": np.abs(gray - gray[:, :, ::-1]).reshape(n, -1).mean(axis=1),
        "neighbour_difference": _neighbour_difference(gray),
        "fine_neighbour_difference": _neighbour_difference(fine),
        "foreground_texture": _foreground_texture(gray),
        "fine_foreground_texture": _foreground_texture(fine),
        "fine_foreground_laplacian": _foreground_laplacian(fine),
        "block_contrast": _block_contrast(fine),
        "centre_share": _centre_share(fine),
        "orientation_coherence": _orientation_coherence(fine),
        "local_coherence": _local_coherence(fine),
        "mid_gray_fraction": ((fine > MID_GRAY[0]) & (fine < MID_GRAY[1])).reshape(n, -1).mean(axis=1),
    }
    return np.stack([columns[name] for name in FEATURE_NAMES], axis=1).astype(np.float32)


def _neighbour_difference(images: np.ndarray) -> np.ndarray:
    """Mean absolute difference of horizontal and vertical neighbours: texture and edges."""
    n = len(images)
    across = np.abs(np.diff(images, axis=2)).reshape(n, -1).mean(axis=1)
    down = np.abs(np.diff(images, axis=1)).reshape(n, -1).mean(axis=1)
    return across + down


def _foreground_texture(images: np.ndarray) -> np.ndarray:
    """Mean absolute difference of neighbours that are both brighter than the background: the texture of what is
    in the picture, however much black surrounds it (a rotated photo's black corners dilute the plain mean; a
    phantom's flat ellipses have almost none; brain tissue has some)."""
    n = len(images)
    total, count = np.zeros(n), np.zeros(n)
    for a, b in ((images[:, :, 1:], images[:, :, :-1]), (images[:, 1:, :], images[:, :-1, :])):
        both = (a > DARK_LEVEL) & (b > DARK_LEVEL)
        total += (np.abs(a - b) * both).reshape(n, -1).sum(axis=1)
        count += both.reshape(n, -1).sum(axis=1)
    return total / np.maximum(count, 1)


def _foreground_laplacian(images: np.ndarray) -> np.ndarray:
    """Mean absolute Laplacian over pixels brighter than the background: fine detail (noise, edges) in the picture."""
    n = len(images)
    centre = images[:, 1:-1, 1:-1]
    laplacian = 4 * centre - images[:, :-2, 1:-1] - images[:, 2:, 1:-1] - images[:, 1:-1, :-2] - images[:, 1:-1, 2:]
    bright = centre > DARK_LEVEL
    return (np.abs(laplacian) * bright).reshape(n, -1).sum(axis=1) / np.maximum(bright.reshape(n, -1).sum(axis=1), 1)


def _block_contrast(images: np.ndarray) -> np.ndarray:
    """Spread of the brightness of a 4x4 grid of blocks over their mean: a slice (even cropped) is bright tissue
    next to dark surround and ventricles; a texture, a page or noise is about as bright everywhere."""
    n, side = images.shape[:2]
    cell = side // 4
    blocks = images[:, : cell * 4, : cell * 4].reshape(n, 4, cell, 4, cell).mean(axis=(2, 4)).reshape(n, -1)
    return blocks.std(axis=1) / (blocks.mean(axis=1) + 0.05)


def _centre_share(images: np.ndarray) -> np.ndarray:
    """The centre disc's brightness over itself plus the corners': near 1 for a slice on black (still well above
    1/2 when cropped to 70% or rotated), about 1/2 for anything as bright at its corners as at its centre."""
    side = images.shape[1]
    yy, xx = np.mgrid[0:side, 0:side]
    radius = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2) / (side / 2)
    centre, corners = images[:, radius < 0.4].mean(axis=1), images[:, radius > 1.05].mean(axis=1)
    return centre / (centre + corners + 0.02)


def _structure_tensor(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    down = images[:, 2:, 1:-1] - images[:, :-2, 1:-1]
    across = images[:, 1:-1, 2:] - images[:, 1:-1, :-2]
    return across * across, down * down, across * down


def _orientation_coherence(images: np.ndarray) -> np.ndarray:
    """How much the image's edges share one orientation (0: every direction, 1: one), whatever that orientation is
    (so a rotation does not change it): text, bricks, plots and screens are lines; a slice's edges go every way."""
    xx, yy, xy = (part.sum(axis=(1, 2)) for part in _structure_tensor(images))
    return np.sqrt((xx - yy) ** 2 + 4 * xy**2) / (xx + yy + 1e-6)


def _local_coherence(images: np.ndarray, cell: int = 8) -> np.ndarray:
    """The orientation coherence of 8x8 cells, averaged weighted by their edge energy: strokes, fibres and grass
    are locally straight; a slice's local edges less so."""
    n = len(images)
    parts = []
    for part in _structure_tensor(images):
        cells = part.shape[1] // cell
        parts.append(part[:, : cells * cell, : cells * cell].reshape(n, cells, cell, cells, cell).sum(axis=(2, 4)))
    xx, yy, xy = parts
    energy = xx + yy
    coherence = np.sqrt((xx - yy) ** 2 + 4 * xy**2) / (energy + 1e-4)
    return (coherence * energy).sum(axis=(1, 2)) / (energy.sum(axis=(1, 2)) + 1e-6)


FEATURE_NAMES = (
    "chroma_mean",
    "border",
    "dark_fraction",
    "asymmetry",
    "neighbour_difference",
    "fine_neighbour_difference",
    "foreground_texture",
    "fine_foreground_texture",
    "fine_foreground_laplacian",
    "block_contrast",
    "centre_share",
    "orientation_coherence",
    "local_coherence",
    "mid_gray_fraction",
)
