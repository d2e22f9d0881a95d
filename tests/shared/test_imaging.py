"""Decoding every image mode to one grayscale channel, and the tensor layouts of the contract."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.contract import PreprocessingContract
from shared.errors import ErrorCode, ServiceError
from shared.imaging import decode_grayscale, decode_to_array, to_model_input


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(size: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "I", "CMYK", "LA", "1"])
def test_every_mode_decodes_to_8bit_grayscale(mode: str) -> None:
    base = Image.fromarray(gradient())
    image = base.convert(mode) if mode not in ("I;16", "I") else Image.fromarray(gradient().astype(np.uint16) * 256)
    if mode == "I":
        image = image.convert("I")
    fmt = "TIFF" if mode in ("CMYK", "I") else "PNG"
    decoded = decode_grayscale(encode(image, fmt))
    assert decoded.mode == "L"
    assert decoded.size == (32, 32)
    pixels = np.asarray(decoded)
    if mode != "1":  # 1-bit keeps only black and white
        assert pixels[:, -1].mean() > pixels[:, 0].mean() + 100, "the gradient survived decoding"


def test_rgb_and_gray_versions_of_one_scan_decode_alike() -> None:
    gray = Image.fromarray(gradient())
    from_gray = np.asarray(decode_grayscale(encode(gray)), dtype=int)
    from_rgb = np.asarray(decode_grayscale(encode(gray.convert("RGB"))), dtype=int)
    assert np.abs(from_gray - from_rgb).max() <= 1


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_grayscale(encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 40), "portrait after EXIF rotation"
    top, bottom = np.asarray(decoded)[:20].mean(), np.asarray(decoded)[20:].mean()
    assert top > 200 > 50 > bottom


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, b"GIF89a"])
def test_non_images_raise_invalid_image(payload: bytes) -> None:
    with pytest.raises(ServiceError) as raised:
        decode_grayscale(payload)
    assert raised.value.code is ErrorCode.INVALID_IMAGE
    assert raised.value.status == 415


def test_truncated_jpeg_is_rejected() -> None:
    data = encode(Image.fromarray(gradient(64)), "JPEG")
    with pytest.raises(ServiceError):
        decode_grayscale(data[: len(data) // 2])


def test_decode_to_array_resizes() -> None:
    array = decode_to_array(encode(Image.fromarray(gradient(64)).convert("RGB")), 16)
    assert array.shape == (16, 16) and array.dtype == np.uint8


def test_model_input_layouts_and_scaling() -> None:
    pixels = np.full((3, 16, 16), 255, dtype=np.uint8)
    flat = to_model_input(pixels, PreprocessingContract(image_size=16, layout="flat", scaling="unit"))
    assert flat.shape == (3, 256) and flat.dtype == np.float32 and flat.max() == pytest.approx(1.0)
    nhwc = to_model_input(pixels, PreprocessingContract(image_size=16, layout="nhwc", scaling="raw"))
    assert nhwc.shape == (3, 16, 16, 1) and nhwc.max() == pytest.approx(255.0)
    with pytest.raises(ValueError):
        to_model_input(pixels, PreprocessingContract(image_size=32))


def test_image_max_scaling_removes_overall_gain() -> None:
    contract = PreprocessingContract(image_size=16, layout="flat", scaling="image_max")
    scan = np.tile(np.linspace(0, 200, 16, dtype=np.uint8), (16, 1))
    dimmer = (scan * 0.5).astype(np.uint8)
    bright, dim = to_model_input(np.stack([scan, dimmer]), contract)
    assert bright.max() == pytest.approx(1.0) and dim.max() == pytest.approx(1.0)
    np.testing.assert_allclose(bright, dim, atol=0.02)
    black = to_model_input(np.zeros((1, 16, 16), np.uint8), contract)
    assert np.isfinite(black).all() and black.max() == 0.0
