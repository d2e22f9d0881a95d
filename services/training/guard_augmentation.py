"""Random realistic re-uploads of a training slice, for fitting the guard against non-MRI input.

A real scan reaches the service cropped, slightly rotated, re-compressed, windowed otherwise, noisier or with text
burned in; a one-class model fitted on the dataset's slices alone refuses many of those (a 70% centre crop: 5 in
12). So the guard is fitted on each training slice and on ``AUGMENTED_COPIES`` random re-uploads of it. They are
still MRI slices: nothing here looks at a non-MRI image.

Each copy applies each change independently with its probability, with settings drawn from ranges somewhat wider
than what the benchmark checks (benchmarks/guard_variants.py, its own fixed settings), then is encoded as PNG or
JPEG and decoded by the guard's own input code, exactly as an upload would be.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.core.imaging import to_grayscale

# Random re-uploads fitted per training slice.
AUGMENTED_COPIES = 2
# Each change's probability and range.
CROP_PROBABILITY, CROP_RANGE = 0.5, (0.6, 0.95)  # fraction of the side kept, centre moved by up to 5%
ROTATION_PROBABILITY, ROTATION_DEGREES = 0.5, 20.0
INTENSITY_PROBABILITY, GAMMA_RANGE, CONTRAST_RANGE = 0.5, (0.5, 2.0), (0.5, 1.0)
NOISE_PROBABILITY, NOISE_SIGMA = 0.3, (2.0, 14.0)  # of 255
TEXT_PROBABILITY = 0.25
RESIZE_PROBABILITY, RESIZE_SIDES = 0.3, (96, 768)
JPEG_PROBABILITY, JPEG_QUALITY = 0.5, (20, 95)

_WORDS = ("AX", "COR", "SAG", "T1", "T2", "FLAIR", "+C", "SE", "IM", "MR", "3T", "1.5T", "L", "R", "A", "P", "W", "C")


def augmented(data: bytes, rng: np.random.Generator) -> bytes:
    """One random re-upload of a slice's file (PNG or JPEG bytes)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = to_grayscale(opened)
    if rng.random() < CROP_PROBABILITY:
        image = _crop(image, rng)
    if rng.random() < ROTATION_PROBABILITY:
        angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    if rng.random() < INTENSITY_PROBABILITY:
        image = _intensity(image, rng)
    if rng.random() < TEXT_PROBABILITY:
        image = _text(image, rng)
    if rng.random() < NOISE_PROBABILITY:
        values = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(*NOISE_SIGMA), image.size[::-1])
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if rng.random() < RESIZE_PROBABILITY:
        side = int(rng.integers(*RESIZE_SIDES))
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if rng.random() < JPEG_PROBABILITY:
        image.convert("RGB").save(buffer, format="JPEG", quality=int(rng.integers(*JPEG_QUALITY)))
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    fraction = rng.uniform(*CROP_RANGE)
    w, h = max(8, round(width * fraction)), max(8, round(height * fraction))
    shift_x, shift_y = (rng.uniform(-0.05, 0.05, 2) * (width, height)).round().astype(int)
    left = int(np.clip((width - w) // 2 + shift_x, 0, width - w))
    top = int(np.clip((height - h) // 2 + shift_y, 0, height - h))
    return image.crop((left, top, left + w, top + h))


def _intensity(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    values = np.asarray(image, dtype=np.float64) / 255.0
    choice = rng.integers(3)
    if choice == 0:
        values = values ** np.exp(rng.uniform(*np.log(GAMMA_RANGE)))
    elif choice == 1:
        values = values * rng.uniform(*CONTRAST_RANGE)
    else:  # a narrower window: a high quantile of the tissue becomes white
        bright = values[values > 0.08]
        high = float(np.quantile(bright, rng.uniform(0.85, 0.99))) if bright.size else 1.0
        values = values / max(high, 1e-3)
    return Image.fromarray(np.clip(np.rint(values * 255), 0, 255).astype(np.uint8))


def _text(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    size = max(6, round(height * rng.uniform(0.025, 0.05)))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):  # blocks of lines in random corners
        x = round(width * (0.02 if rng.random() < 0.5 else rng.uniform(0.5, 0.7)))
        y = round(height * (0.02 if rng.random() < 0.5 else rng.uniform(0.8, 0.9)))
        for row in range(int(rng.integers(1, 4))):
            line = " ".join(str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 4))))
            line += f" {int(rng.integers(0, 9999))}"
            draw.text((x, y + row * round(size * 1.2)), line, fill=int(rng.integers(180, 256)), font=font)
    return image
