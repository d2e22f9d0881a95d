"""The guard's input, defined once for training and inference: the gray thumbnail is exactly the classifiers' decoding,
colour is seen (and only colour: a gray image stored as RGB has none), DICOM goes through the same decoding, and
odd or bad uploads are handled as every other decoding handles them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.core.guard_input import (
    COLOUR_SIZE,
    FEATURE_NAMES,
    THUMBNAIL_SIZE,
    colour_thumbnail,
    guard_input,
)
from shared.core.imaging import decode_to_array
from shared.kit.errors import ErrorCode, ServiceError
from tests.dicom_files import write_dicom

CHROMA = FEATURE_NAMES.index("chroma_mean")


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def colourful(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return Image.fromarray((np.stack([xx, yy, 1 - xx], axis=-1) * 255).astype(np.uint8))


def test_pixels_are_the_classifiers_thumbnail_and_features_are_finite(sample_images: dict[str, bytes]) -> None:
    for data in sample_images.values():
        inputs = guard_input(data)
        expected = decode_to_array(data, THUMBNAIL_SIZE).reshape(1, -1) / 255.0
        np.testing.assert_array_equal(inputs.pixels, expected.astype(np.float32))
        assert inputs.features.shape == (1, len(FEATURE_NAMES))
        assert np.isfinite(inputs.features).all() and (inputs.features >= 0).all()
        # the third input (v4): the colour thumbnail itself, as the graph takes it
        np.testing.assert_array_equal(inputs.colours[0], colour_thumbnail(data))
        colour = inputs.colour_input()
        assert colour.shape == (1, COLOUR_SIZE, COLOUR_SIZE, 3) and colour.dtype == np.float32


def test_a_gray_slice_stored_as_rgb_jpeg_has_no_colour_and_a_photo_has(sample_images: dict[str, bytes]) -> None:
    slice_rgb = Image.open(io.BytesIO(sample_images["glioma"])).convert("RGB")
    gray_jpeg = guard_input(encode(slice_rgb, "JPEG", quality=90)).features[0, CHROMA]
    photo = guard_input(encode(colourful(), "JPEG", quality=90)).features[0, CHROMA]
    assert gray_jpeg < 0.01, gray_jpeg
    assert photo > 0.3, photo


def test_transparent_pixels_are_black_as_in_the_gray_decoding() -> None:
    rgba = np.zeros((80, 80, 4), dtype=np.uint8)
    rgba[20:60, 20:60] = (200, 40, 40, 255)  # an opaque red square on a transparent background
    thumbnail = colour_thumbnail(encode(Image.fromarray(rgba)))
    assert thumbnail.shape == (COLOUR_SIZE, COLOUR_SIZE, 3)
    assert (thumbnail[:8, :8] == 0).all()
    assert thumbnail[32, 32].tolist() == [200, 40, 40]


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "CMYK", "1"])
def test_every_mode_gives_an_input(mode: str) -> None:
    base = colourful(48)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 256)
    else:
        image = base.convert(mode)
    inputs = guard_input(encode(image, "TIFF" if mode == "CMYK" else "PNG"))
    assert inputs.pixels.shape == (1, THUMBNAIL_SIZE**2)
    assert np.isfinite(inputs.features).all()


def test_a_large_image_is_reduced_before_its_colour_is_taken() -> None:
    large = colourful(64).resize((3000, 2200))
    thumbnail = colour_thumbnail(encode(large))
    small = colour_thumbnail(encode(colourful(64).resize((300, 220))))
    assert thumbnail.shape == (COLOUR_SIZE, COLOUR_SIZE, 3)
    assert np.abs(thumbnail.astype(int) - small.astype(int)).mean() < 3


def test_dicom_goes_through_the_same_decoding(sample_images: dict[str, bytes]) -> None:
    jpeg = sample_images["meningioma"]
    gray = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))
    from_jpeg, from_dicom = guard_input(jpeg), guard_input(write_dicom(gray))
    np.testing.assert_array_equal(from_dicom.pixels, from_jpeg.pixels)
    np.testing.assert_allclose(from_dicom.features, from_jpeg.features, atol=0.02)


def test_bad_uploads_are_refused_as_every_decoding_refuses_them() -> None:
    with pytest.raises(ServiceError) as caught:
        guard_input(b"not an image at all")
    assert caught.value.code == ErrorCode.INVALID_IMAGE
    with pytest.raises(ServiceError) as caught:
        guard_input(encode(colourful()), frame=2)
    assert caught.value.code == ErrorCode.INVALID_REQUEST


def test_a_decoding_the_caller_holds_gives_the_same_input(sample_images: dict[str, bytes]) -> None:
    """Inference decodes a file once for the guard and the model: the guard's input from that decoding is the
    guard's input from the file, and it is that decoding the guard reads (an inverted one inverts the thumbnail)."""
    from PIL import ImageOps

    from shared.core.imaging import decode_grayscale

    for data in sample_images.values():
        gray = decode_grayscale(data)
        alone, shared = guard_input(data), guard_input(data, gray=gray)
        np.testing.assert_array_equal(alone.pixels, shared.pixels)
        np.testing.assert_array_equal(alone.features, shared.features)
        np.testing.assert_array_equal(alone.colours, shared.colours)
        inverted = guard_input(data, gray=ImageOps.invert(gray))
        np.testing.assert_allclose(inverted.pixels, 1.0 - alone.pixels, atol=1.01 / 255)


def test_structure_statistics_see_lines_and_a_slice_on_black(sample_images: dict[str, bytes]) -> None:
    """Orientation coherence is high for lines whatever their angle; a slice's centre is brighter than its corners."""
    from PIL import ImageDraw

    coherence, centre = FEATURE_NAMES.index("orientation_coherence"), FEATURE_NAMES.index("centre_share")
    stripes = Image.new("L", (128, 128), 0)
    draw = ImageDraw.Draw(stripes)
    for x in range(0, 128, 8):
        draw.rectangle((x, 0, x + 3, 127), fill=255)
    upright = guard_input(encode(stripes)).features[0]
    rotated = guard_input(encode(stripes.rotate(30, fillcolor=0))).features[0]
    mri = guard_input(sample_images["glioma"]).features[0]
    assert upright[coherence] > 0.9 and rotated[coherence] > 0.6
    assert mri[coherence] < 0.5
    assert mri[centre] > 0.7
    assert upright[centre] == pytest.approx(0.5, abs=0.1)
