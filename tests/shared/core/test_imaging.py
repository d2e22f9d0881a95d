"""Decoding every image mode to one grayscale channel, and the tensor layouts of the contract."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageOps
from pydantic import ValidationError

from shared.core import decoding
from shared.core.contract import PreprocessingContract
from shared.core.imaging import decode_grayscale, decode_to_array, resize_gray, to_grayscale, to_model_input
from shared.kit.errors import ErrorCode, ServiceError


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


# -- bounded decoding: the pixel limit, smaller decodes of large images, the decode slots -----------------


@pytest.fixture
def decode_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set ``BT_DECODE_*`` variables for one test; the process's cached settings and slots follow them."""
    decoding.decode_settings.cache_clear()
    decoding._decode_slots.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    decoding.decode_settings.cache_clear()
    decoding._decode_slots.cache_clear()


def full_decode_reference(data: bytes, size: int) -> np.ndarray:
    """What decoding did before it was bounded: the whole image loaded, then grayscale, then resized."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return resize_gray(to_grayscale(ImageOps.exif_transpose(image)), size)


def scan_like(width: int, height: int) -> Image.Image:
    """A smooth RGB image with structure at every scale, as a large photograph of a scan would have."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gray = 127 + 60 * np.sin(x / 97.0) * np.cos(y / 61.0) + 60 * np.sin((x + y) / 331.0)
    rgb = np.stack([gray, gray * 0.9, gray * 0.8], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("side", [224, 512, decoding.FULL_DECODE_MAX_SIDE])
def test_images_up_to_the_full_decode_side_decode_exactly_as_before(side: int) -> None:
    scan = scan_like(side, side // 2)
    for data in (encode(scan, "JPEG", quality=90), encode(scan.convert("RGBA"), compress_level=1)):
        assert np.array_equal(decode_to_array(data, 224), full_decode_reference(data, 224))


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("TIFF", "CMYK")]
)
def test_large_images_are_decoded_smaller_and_stay_close_to_a_full_decode(fmt: str, mode: str) -> None:
    base = scan_like(2600, 1900)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 200)
    else:
        image = base.convert(mode)
    data = encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
    decoded = decode_grayscale(data)
    assert decoded.mode == "L"
    assert decoding.REDUCED_MIN_SIDE <= max(decoded.size) <= decoding.FULL_DECODE_MAX_SIDE
    assert decoded.size[0] > decoded.size[1], "the aspect ratio is kept"
    difference = np.abs(decode_to_array(data, 224).astype(int) - full_decode_reference(data, 224))
    assert difference.max() <= 12 and difference.mean() < 1.0


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_images_keep_their_exif_orientation(fmt: str) -> None:
    pixels = np.zeros((2500, 5000), dtype=np.uint8)
    pixels[:, :2500] = 255  # left half white, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_grayscale(encode(Image.fromarray(pixels), fmt, exif=exif.tobytes()))
    assert decoded.size[1] > decoded.size[0], "portrait after EXIF rotation"
    half = decoded.size[1] // 2
    assert np.asarray(decoded)[: half - 8].mean() > 200 > 50 > np.asarray(decoded)[half + 8 :].mean()


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(decode_env: pytest.MonkeyPatch) -> None:
    # 7000x7000 RGBA in a few hundred KB: the case, refused by the default limit.
    huge = encode(Image.new("RGBA", (7000, 7000)), compress_level=1)
    with pytest.raises(ServiceError) as raised:
        decode_grayscale(huge)
    assert raised.value.status == 415 and "BT_DECODE_MAX_PIXELS" in raised.value.message
    decode_env.setenv("BT_DECODE_MAX_PIXELS", str(100 * 100))
    decoding.decode_settings.cache_clear()
    assert decode_grayscale(encode(Image.new("L", (100, 100)))).size == (100, 100)
    with pytest.raises(ServiceError, match="at most 10000 pixels"):
        decode_grayscale(encode(Image.new("L", (101, 100))))


def test_decodes_beyond_the_slots_wait_then_get_server_busy(decode_env: pytest.MonkeyPatch) -> None:
    decode_env.setenv("BT_DECODE_MAX_CONCURRENT", "1")
    decode_env.setenv("BT_DECODE_WAIT_S", "0.05")
    data = encode(Image.fromarray(gradient()))
    outcome: list[object] = []

    def decode_elsewhere() -> None:
        try:
            outcome.append(decode_grayscale(data))
        except ServiceError as exc:
            outcome.append(exc)

    with decoding.decode_slot():  # the one slot is taken
        worker = threading.Thread(target=decode_elsewhere)
        worker.start()
        worker.join(timeout=5)
    [busy] = outcome
    assert isinstance(busy, ServiceError) and busy.code is ErrorCode.SERVER_BUSY and busy.status == 503
    assert busy.retry_after_s == decoding.BUSY_RETRY_AFTER_S
    assert decode_grayscale(data).size == (32, 32), "the slot is free again once released"


@pytest.mark.parametrize(("variable", "value"), [("MAX_PIXELS", "0"), ("MAX_CONCURRENT", "-1"), ("WAIT_S", "soon")])
def test_bad_decode_settings_are_refused(decode_env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    decode_env.setenv(f"BT_DECODE_{variable}", value)
    with pytest.raises(ValidationError, match=variable.lower()):
        decoding.decode_settings()
