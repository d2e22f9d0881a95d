"""The out-of-distribution test set: images that are not brain MRI slices, from what installs offline.

Sources (each image is encoded to PNG bytes, as a client would upload it):
- scikit-image's bundled sample images (photos, microscopy, astronomy, text, a fundus photo, textures; the
  Shepp-Logan phantom is a synthetic head *CT* phantom and is kept: it is not an MRI slice, and it is the
  hardest case here) and matplotlib's sample data (photos, a DEM, a screenshot-like plot);
- generated images: noise, gradients, rendered text, checkerboards, plots and a UI-like rendering;
- transforms of the photo-like images: centre crops, rotations, inversion, flips, a blur and a downscale;
- other modalities, uploaded as DICOM files (added after the first 248 images; ``ood_images(other_modalities=
  False)`` is the original set): pydicom's bundled example files of CT, ultrasound, nuclear medicine and
  secondary captures, those our decoding reads (``OTHER_MODALITY_FILES``).
Nothing here is ever used to fit the guard. ``python -m benchmarks.ood_guard`` reports on it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

# scikit-image sample images that ship inside the wheel (no download); checked offline.
SKIMAGE_IMAGES = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip
MATPLOTLIB_IMAGES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
# pydicom's bundled example files that are images of another modality than MR (CT, US, NM) or secondary captures.
OTHER_MODALITY_PREFIX = "pydicom:"
OTHER_MODALITY_FILES = (
    "CT_small.dcm", "693_J2KI.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "ExplVR_BigEnd.dcm",
    "JPEG-lossy.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "SC_rgb_jpeg.dcm", "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "image_dfl.dcm",
)  # fmt: skip


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            low, high = float(array.min()), float(array.max())
            array = ((array - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _skimage_images() -> Iterator[tuple[str, Image.Image]]:
    import skimage.data

    for name in SKIMAGE_IMAGES:
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # an image that would need a download: not part of the offline set
            continue
        yield f"skimage:{name}", Image.open(io.BytesIO(png_bytes(array)))


def _matplotlib_images() -> Iterator[tuple[str, Image.Image]]:
    from matplotlib import cbook

    for name in MATPLOTLIB_IMAGES:
        try:
            with cbook.get_sample_data(name) as handle:
                image = Image.open(io.BytesIO(handle.read()))
                image.load()
        except Exception:  # absent from this matplotlib
            continue
        yield f"matplotlib:{name}", image


def _text_image(rng: np.random.Generator, size: int = 256) -> Image.Image:
    background = int(rng.integers(180, 256))
    image = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(image)
    words = ["brain", "tumour", "report", "patient", "scan", "invoice", "hello", "total", "2026", "page"]
    for row in range(int(rng.integers(6, 14))):
        line = " ".join(rng.choice(words, size=5))
        draw.text((8, 8 + row * 18), line, fill=int(rng.integers(0, 80)))
    return image


def _ui_image(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A screenshot-like rendering: a title bar, panels, buttons and text."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size, 24), fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
    for _ in range(int(rng.integers(3, 8))):
        x, y = (int(v) for v in rng.integers(0, size - 60, 2))
        draw.rectangle((x, y, x + 60, y + 24), fill=tuple(int(v) for v in rng.integers(0, 256, 3)), outline=0)
        draw.text((x + 4, y + 6), "OK", fill=(0, 0, 0))
    return image


def _plot_image(rng: np.random.Generator, size: int = 256) -> Image.Image:
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    draw.line((20, size - 20, size - 10, size - 20), fill=0)
    draw.line((20, 10, 20, size - 20), fill=0)
    points = np.cumsum(rng.normal(0, 8, 40))
    xs = np.linspace(22, size - 12, 40)
    ys = size / 2 - points
    draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=0, width=2)
    return image


def generated_images(seed: int = 7, per_kind: int = 4) -> Iterator[tuple[str, Image.Image]]:
    """Noise, gradients, text, checkerboards, plots and UI-like renderings (``per_kind`` of each)."""
    rng = np.random.default_rng(seed)
    size = 256
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(per_kind):
        yield f"generated:uniform_noise_{i}", Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
        gaussian = np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (size, size)), 0, 255)
        yield f"generated:gaussian_noise_{i}", Image.fromarray(gaussian.astype(np.uint8))
        angle = rng.uniform(0, 2 * np.pi)
        gradient = (np.cos(angle) * xx + np.sin(angle) * yy) * 255
        yield f"generated:gradient_{i}", Image.fromarray(png_ready(gradient))
        cells = int(rng.integers(2, 16))
        board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 255
        yield f"generated:checkerboard_{i}", Image.fromarray(board.astype(np.uint8))
        yield f"generated:text_{i}", _text_image(rng)
        yield f"generated:ui_{i}", _ui_image(rng)
        yield f"generated:plot_{i}", _plot_image(rng)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        yield f"generated:flat_{i}", Image.new("RGB", (size, size), colour)


def png_ready(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return ((values - low) / max(high - low, 1e-9) * 255).astype(np.uint8)


def _transforms(name: str, image: Image.Image) -> Iterator[tuple[str, Image.Image]]:
    """A few variants of a photo-like image, as users would upload them."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    yield f"{name}|crop", image.crop((left, top, left + side, top + side))
    yield f"{name}|rot90", image.rotate(90, expand=True)
    yield f"{name}|rot30", image.rotate(30, expand=True)
    gray = image.convert("L")
    yield f"{name}|inverted", ImageOps.invert(gray)
    yield f"{name}|mirror", ImageOps.mirror(image)
    yield f"{name}|blur", image.filter(ImageFilter.GaussianBlur(3))
    yield f"{name}|small", image.resize((max(8, width // 6), max(8, height // 6)))


def _other_modality_files() -> Iterator[tuple[str, bytes]]:
    """pydicom's example files of other modalities, as DICOM bytes; those our decoding cannot read (a missing
    decoder for their transfer syntax) are left out."""
    from pydicom.data import get_testdata_file

    from shared.core.imaging import decode_grayscale
    from shared.kit.errors import ServiceError

    for name in OTHER_MODALITY_FILES:
        try:
            data = Path(str(get_testdata_file(name))).read_bytes()
            decode_grayscale(data)
        except (ServiceError, OSError, TypeError, ValueError):
            continue
        yield f"{OTHER_MODALITY_PREFIX}{name}", data


def ood_images(seed: int = 7, transforms: bool = True, other_modalities: bool = True) -> list[tuple[str, bytes]]:
    """The whole set as (name, bytes): sample images, their transforms and generated images (PNG), then other
    modalities (DICOM) unless ``other_modalities`` is False (the original 248-image set)."""
    items: list[tuple[str, bytes]] = []
    for name, image in [*_skimage_images(), *_matplotlib_images()]:
        items.append((name, png_bytes(image)))
        if transforms:
            items.extend((variant, png_bytes(changed)) for variant, changed in _transforms(name, image))
    items.extend((name, png_bytes(image)) for name, image in generated_images(seed))
    if other_modalities:
        items.extend(_other_modality_files())
    return items


def source_of(name: str) -> str:
    """The group an image is reported under: its source and kind (``skimage``, ``generated:text`` ...)."""
    base = name.split("|")[0]
    if base.startswith("generated:"):
        return "generated:" + base.split(":", 1)[1].rsplit("_", 1)[0]
    return base.split(":", 1)[0] + (" (transformed)" if "|" in name else "")
