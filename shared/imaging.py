"""Image decoding and the tensor layout defined by the preprocessing contract.

Every path (training cache, inference, explanations) goes through these functions.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.contract import PreprocessingContract
from shared.dicom import decode_dicom, is_dicom
from shared.errors import ErrorCode, ServiceError

# Guard against decompression bombs well below Pillow's default (about 179 Mpx).
MAX_PIXELS = 50_000_000


def decode_grayscale(data: bytes, frame: int | None = None) -> Image.Image:
    """Decode image bytes to one 8-bit grayscale channel, EXIF orientation applied.

    A DICOM file goes through its own display pipeline (shared/dicom.py); ``frame`` picks one frame of a
    multi-frame DICOM file (0-based). Other formats are one frame: only ``frame`` 0 (or none) fits them.
    """
    if not data:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The uploaded file is empty.")
    if is_dicom(data):
        return decode_dicom(data, frame, MAX_PIXELS)
    if frame:
        raise ServiceError(ErrorCode.INVALID_REQUEST, "`frame` applies to DICOM files only; this image has one frame.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ServiceError(
                    ErrorCode.INVALID_IMAGE,
                    f"Image is {image.width}x{image.height} pixels; at most {MAX_PIXELS} pixels are accepted.",
                )
            image.load()
            return to_grayscale(ImageOps.exif_transpose(image))
    except ServiceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            "The file is not an image that can be decoded (expected JPEG, PNG, BMP, TIFF or similar).",
        ) from exc


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
