"""Image decoding and the tensor layout defined by the preprocessing contract.

Every path (training cache, inference, explanations) goes through these functions.

Decoding is bounded, because a small file can declare a huge image (a 190 KB PNG of 7000x7000 RGBA took a
gigabyte to decode in full): the header is read first and an image above ``max_pixels`` is refused; an image
whose longer side is above ``FULL_DECODE_MAX_SIDE`` is decoded smaller (JPEG at 1/2..1/8 scale by its decoder,
other formats box-reduced right after loading, before any mode conversion); and at most ``max_concurrent``
decodes run at once in a process (the others wait up to ``wait_s``, then 503 SERVER_BUSY). Images up to
``FULL_DECODE_MAX_SIDE`` (every MRI slice) are decoded exactly as before, so training's cache and inference agree.
The limits are one shared setting, ``BT_DECODE_*``, read once per process.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.core.contract import PreprocessingContract
from shared.core.decoding import (
    FULL_DECODE_MAX_SIDE,
    REDUCED_MIN_SIDE,
    TRIM_AFTER_PIXELS,
    decode_settings,
    decode_slot,
    give_memory_back,
)
from shared.core.dicom import declared_modality, decode_dicom, is_dicom
from shared.kit.errors import ErrorCode, ServiceError

_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_grayscale(data: bytes, frame: int | None = None) -> Image.Image:
    """Decode image bytes to one 8-bit grayscale channel, EXIF orientation applied.

    A DICOM file goes through its own display pipeline (shared/core/dicom.py); ``frame`` picks one frame of a
    multi-frame DICOM file (0-based). Other formats are one frame: only ``frame`` 0 (or none) fits them.
    """
    if not data:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The uploaded file is empty.")
    max_pixels = decode_settings().max_pixels
    if is_dicom(data):
        with decode_slot():
            return decode_dicom(data, frame, max_pixels)
    if frame:
        raise ServiceError(ErrorCode.INVALID_REQUEST, "`frame` applies to DICOM files only; this image has one frame.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Only the header has been read so far: refuse before a single pixel is decoded.
            if image.width * image.height > max_pixels:
                raise ServiceError(
                    ErrorCode.INVALID_IMAGE,
                    f"Image is {image.width}x{image.height} pixels; at most {max_pixels} pixels are accepted "
                    "(BT_DECODE_MAX_PIXELS).",
                )
            large = image.width * image.height > TRIM_AFTER_PIXELS
            with decode_slot():
                decoded = _decode_bounded(image)
    except ServiceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            "The file is not an image that can be decoded (expected JPEG, PNG, BMP, TIFF or similar, or DICOM).",
        ) from exc
    if large:  # the full-size pixels are freed now that the file is closed: give their pages back
        give_memory_back()
    return decoded


def _decode_bounded(image: Image.Image) -> Image.Image:
    """An opened image's pixels as 8-bit grayscale, upright, its longer side at most ``FULL_DECODE_MAX_SIDE``
    (or exactly as before when it already is)."""
    if max(image.size) <= FULL_DECODE_MAX_SIDE:
        image.load()
        return to_grayscale(ImageOps.exif_transpose(image))
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    factor = max(image.size) // REDUCED_MIN_SIDE
    if image.format == "JPEG":
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the size asked for: the full image never exists.
        image.draft(image.mode, (math.ceil(image.width / factor), math.ceil(image.height / factor)))
    image.load()
    if max(image.size) > FULL_DECODE_MAX_SIDE:
        image = _reduce(image, max(image.size) // REDUCED_MIN_SIDE)
    transpose = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if transpose is not None:
        image = image.transpose(transpose)
    return to_grayscale(image)


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """Box-average ``factor`` x ``factor`` blocks in the image's own mode (at most 4 bytes a pixel, never floats)."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    try:
        return image.reduce(factor)
    except ValueError:  # modes reduce() does not take ("1", "P"): their 8-bit grayscale first
        return to_grayscale(image).reduce(factor)


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any mode (L, RGB, RGBA, P, I;16, I, F, CMYK, LA, 1) to 8-bit L."""
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit depth: stretch the actual range to 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, the background of an MRI slice.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image.convert("L")


def resize_gray(image: Image.Image, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size uint8 (bilinear, as the cache and inference both use)."""
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode_to_array(data: bytes, size: int, frame: int | None = None) -> np.ndarray:
    """Bytes to a (size, size) uint8 grayscale array (``frame``: see ``decode_grayscale``)."""
    return resize_gray(decode_grayscale(data, frame), size)


def to_model_input(pixels: np.ndarray, contract: PreprocessingContract) -> np.ndarray:
    """uint8 images (N, size, size) to the float32 tensor the contract describes."""
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    expected = (contract.image_size, contract.image_size)
    if pixels.shape[1:] != expected:
        raise ValueError(f"expected images of {expected}, got {pixels.shape[1:]}")
    batch = pixels.astype(np.float32)
    if contract.scaling == "unit":
        batch /= 255.0
    elif contract.scaling == "image_max":
        batch /= np.maximum(batch.max(axis=(1, 2), keepdims=True), 1.0)
    if contract.layout == "flat":
        return batch.reshape(len(batch), -1)
    return batch[..., np.newaxis]


class DecodedImage:
    """One image on its way to the models: decoded once, resized at most once per size, whoever reads it.

    Made from an upload (``decode``: the file's bytes are kept for readers that need more than the grayscale
    pixels, such as the guard's colour statistics, and a DICOM file's declared ``modality`` is read once) or from
    pixels a caller already holds (``from_pixels``).
    One request's object: not shared between threads while it is read.
    """

    def __init__(
        self, gray: Image.Image | None, data: bytes | None = None, frame: int | None = None,
        pixels: np.ndarray | None = None, modality: str | None = None,
    ) -> None:  # fmt: skip
        self._gray = gray
        self.data = data
        self.frame = frame
        self.modality = modality  # what a DICOM upload's header declares (e.g. "MR", "CT"); None otherwise
        self._sizes: dict[int, np.ndarray] = {}
        if pixels is not None:
            self._sizes[int(pixels.shape[0])] = pixels

    @classmethod
    def decode(cls, data: bytes, frame: int | None = None) -> DecodedImage:
        """An uploaded file (``decode_grayscale``: a bad file is its 415)."""
        gray = decode_grayscale(data, frame)
        return cls(gray, data, frame, modality=declared_modality(data) if is_dicom(data) else None)

    @classmethod
    def from_pixels(cls, pixels: np.ndarray) -> DecodedImage:
        """A square uint8 grayscale image a caller already holds (no file behind it)."""
        return cls(None, pixels=np.asarray(pixels, dtype=np.uint8))

    @property
    def gray(self) -> Image.Image:
        if self._gray is None:
            self._gray = Image.fromarray(next(iter(self._sizes.values())), mode="L")
        return self._gray

    def at(self, size: int) -> np.ndarray:
        """The image as (size, size) uint8, resized once per size (bilinear, as training's cache)."""
        pixels = self._sizes.get(size)
        if pixels is None:
            pixels = self._sizes[size] = resize_gray(self.gray, size)
        return pixels
