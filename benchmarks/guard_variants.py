"""Realistic variants of a real MRI slice, as a client might upload it: the guard must accept these.

Each variant turns the bytes of a dataset slice into the bytes of another upload of the same scan: cropped,
rotated, re-compressed, resized, windowed differently, stored as 16-bit DICOM, annotated with burned-in text or
noisier. ``python -m benchmarks.ood_guard`` makes them from held-out slices only (each scored by a guard fitted
without that slice's duplicate group) and reports each variant's acceptance rate.

The variants are fixed (no randomness but the index-driven choice of sign, text and noise seed), so a run is
reproducible. The fitting augmentation (``services.training.ood_guard.augmented_input``) draws its own random
settings from wider ranges; the two share the ideas (a crop, a rotation ...) but not the code or the values.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.core.imaging import to_grayscale


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gray(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_grayscale(image)


def _centre_crop(data: bytes, fraction: float) -> bytes:
    image = _gray(data)
    width, height = image.size
    w, h = round(width * fraction), round(height * fraction)
    left, top = (width - w) // 2, (height - h) // 2
    return _encode(image.crop((left, top, left + w, top + h)))


def _rotated(data: bytes, index: int, degrees: float) -> bytes:
    sign = 1 if index % 2 == 0 else -1  # half clockwise, half counter-clockwise
    return _encode(_gray(data).rotate(sign * degrees, resample=Image.Resampling.BILINEAR, fillcolor=0))


def _jpeg(data: bytes, quality: int) -> bytes:
    return _encode(_gray(data).convert("RGB"), "JPEG", quality=quality)


def _resized(data: bytes, side: int) -> bytes:
    image = _gray(data).resize((side, side), Image.Resampling.BICUBIC)
    return _encode(image) if side <= 256 else _encode(image.convert("RGB"), "JPEG", quality=90)


def _intensity(data: bytes, transform: Callable[[np.ndarray], np.ndarray]) -> bytes:
    values = np.asarray(_gray(data), dtype=np.float64) / 255.0
    return _encode(Image.fromarray(np.clip(np.rint(transform(values) * 255), 0, 255).astype(np.uint8)))


def _window(values: np.ndarray, top: float) -> np.ndarray:
    """A narrower display window: the image's ``top`` quantile of non-dark pixels becomes white (clipping above)."""
    bright = values[values > 0.08]
    high = float(np.quantile(bright, top)) if bright.size else 1.0
    return values / max(high, 1e-3)


def _noisy(data: bytes, index: int, sigma: float) -> bytes:
    rng = np.random.default_rng(index)
    return _intensity(data, lambda values: values + rng.normal(0, sigma / 255.0, values.shape))


def dicom16(data: bytes, index: int) -> bytes:
    """A 16-bit MR DICOM file of the slice: 12 bits stored (values about 16x the 8-bit ones plus a little noise, as
    a scanner stores more depth than a JPEG shows); every other file carries a display window (its values' range),
    the others are shown min to max."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(index)
    values = np.asarray(_gray(data), dtype=np.float64) * 16 + rng.normal(0, 4, _gray(data).size[::-1])
    pixels = np.clip(np.rint(values), 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    if index % 2 == 0:
        low, high = float(pixels.min()), float(pixels.max())
        dataset.WindowCenter, dataset.WindowWidth = f"{(low + high) / 2:g}", f"{max(high - low, 1):g}"
    dataset.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_TEXT_LINES = (
    ("DOE^JANE  F 054Y", "ID 0047115", "2024-03-18 14:02"),
    ("AX T1 +C", "SE 4  IM 12", "TR 550 TE 12"),
    ("SMITH^J  M 61Y", "ACC 88213", "3.0T"),
)


def burned_in_text(data: bytes, index: int) -> bytes:
    """Annotations burned into the pixels as scanners and viewers do: patient and series lines in two corners and
    an orientation letter, white, about 4% of the image's height."""
    image = _gray(data)
    width, height = image.size
    size = max(8, round(height * 0.04))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    lines = _TEXT_LINES[index % len(_TEXT_LINES)]
    for row, line in enumerate(lines):
        draw.text((round(width * 0.02), round(height * 0.02) + row * round(size * 1.2)), line, fill=255, font=font)
    draw.text((round(width * 0.6), round(height * 0.92)), "W 1200 L 600", fill=230, font=font)
    draw.text((round(width * 0.02), height // 2), "R", fill=255, font=font)
    return _encode(image)


# name -> (slice bytes, its index) -> variant bytes
VARIANTS: dict[str, Callable[[bytes, int], bytes]] = {
    "centre crop to 80%": lambda data, i: _centre_crop(data, 0.8),
    "centre crop to 70%": lambda data, i: _centre_crop(data, 0.7),
    "rotated by 15 degrees (either way)": lambda data, i: _rotated(data, i, 15.0),
    "rotated by 8 degrees (either way)": lambda data, i: _rotated(data, i, 8.0),
    "JPEG quality 30": lambda data, i: _jpeg(data, 30),
    "resized to 128 px": lambda data, i: _resized(data, 128),
    "resized to 1024 px (JPEG)": lambda data, i: _resized(data, 1024),
    "gamma 0.6 (brighter)": lambda data, i: _intensity(data, lambda v: v**0.6),
    "gamma 1.6 (darker)": lambda data, i: _intensity(data, lambda v: v**1.6),
    "narrower window (top 5% of tissue clipped)": lambda data, i: _intensity(data, lambda v: _window(v, 0.95)),
    "contrast 60% (dimmer)": lambda data, i: _intensity(data, lambda v: v * 0.6),
    "16-bit DICOM (12 bits stored)": dicom16,
    "burned-in text": burned_in_text,
    "Gaussian noise (sigma 8 of 255)": lambda data, i: _noisy(data, i, 8.0),
}
# Reported but not part of the target (a crop that cuts into the skull on most slices).
INFORMATIVE_VARIANTS = ("centre crop to 60%",)
VARIANTS["centre crop to 60%"] = lambda data, i: _centre_crop(data, 0.6)
