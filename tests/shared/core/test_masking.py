"""shared/core/masking.py: label maps at any size, the fills, the keep matrix, and how masks travel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.core.masking import (
    MAX_LABEL_SIDE,
    MAX_REGIONS,
    MaskError,
    RegionMasks,
    fill_image,
    keep_bytes,
    keep_from_bytes,
    labels_at,
    labels_from_png,
    labels_png,
)


def _quadrants(side: int = 4) -> np.ndarray:
    """A side x side label map: a border of 0 around four quadrant regions 1..4 (side even, >= 4)."""
    labels = np.zeros((side, side), dtype=np.int32)
    inner, half = slice(1, side - 1), side // 2
    labels[inner, inner] = 1
    labels[1:half, half : side - 1] = 2
    labels[half : side - 1, 1:half] = 3
    labels[half : side - 1, half : side - 1] = 4
    return labels


def _gradient(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * 7 + cols * 13) % 256).astype(np.uint8)


# -- labels_at -------------------------------------------------------------------------------------------------------


def test_labels_at_a_multiple_repeats_each_label_in_blocks() -> None:
    labels = np.array([[1, 2], [3, 4]])
    assert np.array_equal(labels_at(labels, 4, 4), np.kron(labels, np.ones((2, 2), dtype=labels.dtype)))


def test_labels_at_a_smaller_size_samples_pixel_centres() -> None:
    labels = np.arange(16).reshape(4, 4)
    # Centres of 2 output pixels over 4 source pixels fall on source pixels 1 and 3.
    assert np.array_equal(labels_at(labels, 2, 2), [[5, 7], [13, 15]])


def test_labels_at_keeps_the_labels_and_their_layout_at_any_size() -> None:
    labels = _quadrants(8)
    for height, width in ((8, 8), (24, 24), (5, 7), (224, 224)):
        resized = labels_at(labels, height, width)
        assert resized.shape == (height, width)
        assert set(np.unique(resized)) <= set(np.unique(labels))
    big = labels_at(labels, 224, 224)
    assert big[0, 0] == 0 and big[50, 50] == 1 and big[50, 170] == 2 and big[170, 50] == 3 and big[170, 170] == 4
    assert np.array_equal(labels_at(labels, 8, 8), labels)


# -- fill_image ------------------------------------------------------------------------------------------------------


def test_black_fill_is_zero() -> None:
    pixels = _gradient(16, 16)
    filled = fill_image(pixels, labels_at(_quadrants(), 16, 16), "black")
    assert filled.dtype == np.uint8 and filled.shape == pixels.shape and not filled.any()


def test_grey_fill_is_the_mean_inside_the_regions() -> None:
    pixels = np.zeros((8, 8), dtype=np.uint8)
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[2:6, 2:6] = 1
    pixels[2:6, 2:6] = 100
    pixels[2, 2] = 140  # mean inside: (15 * 100 + 140) / 16 = 102.5 -> 102 (round half to even)
    pixels[0, 0] = 255  # outside the regions: not counted
    filled = fill_image(pixels, labels, "grey")
    assert filled.dtype == np.uint8 and np.all(filled == 102)


def test_grey_fill_without_regions_is_the_image_mean() -> None:
    pixels = np.full((4, 4), 10, dtype=np.uint8)
    pixels[0] = 50
    assert np.all(fill_image(pixels, np.zeros((4, 4), dtype=np.int32), "grey") == 20)


def test_blur_fill_keeps_brightness_and_removes_edges() -> None:
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[:, 32:] = 200
    blurred = fill_image(pixels, labels_at(_quadrants(), 64, 64), "blur")
    assert blurred.dtype == np.uint8 and blurred.shape == pixels.shape
    assert abs(float(blurred.mean()) - float(pixels.mean())) < 3  # brightness stays
    assert np.abs(np.diff(blurred.astype(int), axis=1)).max() < 50  # the 200-step edge is gone
    flat = np.full((32, 32), 77, dtype=np.uint8)
    assert np.array_equal(fill_image(flat, np.ones((32, 32), dtype=np.int32), "blur"), flat)


def test_an_unknown_fill_is_a_mask_error() -> None:
    with pytest.raises(MaskError, match="fill must be one of"):
        fill_image(_gradient(4, 4), _quadrants(), "noise")  # type: ignore[arg-type]


# -- RegionMasks -----------------------------------------------------------------------------------------------------


def test_region_masks_counts_copies_and_regions() -> None:
    masks = RegionMasks(_quadrants(), np.ones((3, 4), dtype=bool), "grey")
    assert (masks.copies, masks.regions, masks.fill) == (3, 4, "grey")
    assert RegionMasks(_quadrants(), np.ones((1, 4), dtype=bool)).fill == "blur"


@pytest.mark.parametrize(
    ("labels", "keep", "fill", "problem"),
    [
        (np.zeros((2, 2, 2), dtype=np.int32), np.ones((1, 1), dtype=bool), "blur", "2-D integer map"),
        (np.ones((4, 4), dtype=np.float32), np.ones((1, 1), dtype=bool), "blur", "2-D integer map"),
        (np.zeros((0, 4), dtype=np.int32), np.ones((1, 1), dtype=bool), "blur", "2-D integer map"),
        (np.ones((MAX_LABEL_SIDE + 1, 4), dtype=np.int32), np.ones((1, 1), dtype=bool), "blur", "at most 1024 px"),
        (np.full((4, 4), -1, dtype=np.int32), np.ones((1, 1), dtype=bool), "blur", "must lie in 0..1024"),
        (np.full((4, 4), MAX_REGIONS + 1), np.ones((1, MAX_REGIONS + 1), dtype=bool), "blur", "must lie in 0..1024"),
        (_quadrants(), np.ones((2, 4), dtype=np.uint8), "blur", "2-D bool matrix"),
        (_quadrants(), np.ones(4, dtype=bool), "blur", "2-D bool matrix"),
        (_quadrants(), np.ones((0, 4), dtype=bool), "blur", "non-empty"),
        (_quadrants(), np.ones((2, 3), dtype=bool), "blur", "3 columns for 4 regions"),
        (_quadrants(), np.ones((2, 5), dtype=bool), "blur", "5 columns for 4 regions"),
        (_quadrants(), np.ones((2, 4), dtype=bool), "white", "fill must be one of"),
    ],
)
def test_region_masks_refuse_what_does_not_describe_regions(
    labels: np.ndarray, keep: np.ndarray, fill: str, problem: str
) -> None:
    with pytest.raises(MaskError, match=problem):
        RegionMasks(labels, keep, fill)  # type: ignore[arg-type]


def test_applied_keeps_the_rows_in_order_and_hides_only_their_regions() -> None:
    pixels = _gradient(16, 16)
    labels = _quadrants(4)  # drawn at 4 x 4, applied at 16 x 16
    at_size = labels_at(labels, 16, 16)
    keep = np.array([[True] * 4, [False, True, True, True], [True, True, True, False], [False] * 4])
    copies = RegionMasks(labels, keep, "black").applied(pixels)
    assert copies.shape == (4, 16, 16) and copies.dtype == np.uint8
    assert np.array_equal(copies[0], pixels)  # every region kept: the image itself
    for copy, row in zip(copies, keep, strict=True):
        hidden = np.isin(at_size, np.flatnonzero(~row) + 1)
        assert np.all(copy[hidden] == 0)
        assert np.array_equal(copy[~hidden], pixels[~hidden])  # label 0 and kept regions untouched
    assert np.array_equal(copies[3][at_size == 0], pixels[at_size == 0])  # label 0 is never hidden


@pytest.mark.parametrize("fill", ["blur", "grey", "black"])
def test_applied_puts_each_fill_in_the_hidden_regions(fill: str) -> None:
    pixels = _gradient(32, 32)
    labels = labels_at(_quadrants(), 32, 32)
    copies = RegionMasks(_quadrants(), np.array([[False, True, True, True]]), fill).applied(pixels)  # type: ignore[arg-type]
    expected = fill_image(pixels, labels, fill)  # type: ignore[arg-type]
    assert np.array_equal(copies[0][labels == 1], expected[labels == 1])
    assert not np.array_equal(copies[0][labels == 1], pixels[labels == 1])


def test_applied_takes_a_slice_of_rows() -> None:
    keep = np.eye(4, dtype=bool)
    masks = RegionMasks(_quadrants(), keep, "black")
    pixels = _gradient(12, 12)
    everything = masks.applied(pixels)
    assert np.array_equal(masks.applied(pixels, slice(1, 3)), everything[1:3])
    assert np.array_equal(masks.applied(pixels, slice(3, 64)), everything[3:])
    assert masks.applied(pixels, slice(4, 8)).shape == (0, 12, 12)


def test_applied_works_on_non_square_images() -> None:
    pixels = _gradient(10, 30)
    copies = RegionMasks(_quadrants(), np.zeros((1, 4), dtype=bool), "black").applied(pixels)
    outside = labels_at(_quadrants(), 10, 30) == 0
    assert copies.shape == (1, 10, 30)
    assert np.array_equal(copies[0][outside], pixels[outside]) and not copies[0][~outside].any()


# -- the wire: label maps as PNG, keep as bytes ------------------------------------------------------------------------


def test_labels_png_round_trips_up_to_the_most_regions() -> None:
    labels = np.arange(MAX_REGIONS + 1, dtype=np.int32).reshape(1, -1).repeat(3, axis=0)[:, :MAX_LABEL_SIDE]
    labels[0, 0] = MAX_REGIONS
    data = labels_png(labels)
    assert data.startswith(b"\x89PNG")
    back = labels_from_png(data)
    assert back.dtype == np.int32 and np.array_equal(back, labels)


def test_labels_from_an_8_bit_png() -> None:
    labels = _quadrants(8).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(labels, mode="L").save(out, format="PNG")
    assert np.array_equal(labels_from_png(out.getvalue()), labels)


def _encoded(image: Image.Image, image_format: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_encoded(Image.new("RGB", (8, 8)), "PNG"), "grayscale PNG"),
        (_encoded(Image.new("L", (8, 8)), "JPEG"), "grayscale PNG"),
        (_encoded(Image.new("L", (8, 8)), "BMP"), "grayscale PNG"),
        (_encoded(Image.new("L", (MAX_LABEL_SIDE + 1, 2)), "PNG"), "at most 1024 px"),
        (b"not an image at all", "not a readable PNG"),
        (b"", "not a readable PNG"),
        (_encoded(Image.new("L", (64, 64)), "PNG")[:40], "not a readable PNG"),
    ],
)
def test_labels_from_png_refuses_anything_else(data: bytes, problem: str) -> None:
    with pytest.raises(MaskError, match=problem):
        labels_from_png(data)


def test_keep_round_trips_row_major() -> None:
    keep = np.random.default_rng(0).random((37, 11)) < 0.5
    data = keep_bytes(keep)
    assert len(data) == 37 * 11 and set(data) <= {0, 1}
    assert data[:11] == bytes(keep[0].astype(np.uint8))
    back = keep_from_bytes(data, 11)
    assert back.dtype == np.bool_ and np.array_equal(back, keep)


@pytest.mark.parametrize(
    ("data", "regions", "problem"),
    [
        (b"\x01" * 10, 4, "one byte per region \\(4\\)"),
        (b"", 4, "one byte per region"),
        (b"\x01" * 4, 0, "one byte per region \\(0\\)"),
        (b"\x01\x00\x02\x01", 4, "0 \\(hide\\) or 1 \\(keep\\)"),
        (b"1111", 4, "0 \\(hide\\) or 1 \\(keep\\)"),  # ASCII digits are not the bytes 0 and 1
    ],
)
def test_keep_from_bytes_refuses_bytes_that_do_not_fit(data: bytes, regions: int, problem: str) -> None:
    with pytest.raises(MaskError, match=problem):
        keep_from_bytes(data, regions)


def test_masks_survive_the_wire() -> None:
    labels = _quadrants(8)
    keep = np.array([[True, False, True, False], [False, True, False, True]])
    masks = RegionMasks(labels, keep, "grey")
    wired = RegionMasks(labels_from_png(labels_png(labels)), keep_from_bytes(keep_bytes(keep), 4), "grey")
    pixels = _gradient(24, 24)
    assert np.array_equal(wired.applied(pixels), masks.applied(pixels))
