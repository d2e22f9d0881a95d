"""services/inference/masked.py: masked copies of one decoding, made once per size when a model first asks."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.masked import MaskedCopies, MaskedImage, read_masks
from shared.core.imaging import DecodedImage
from shared.core.masking import RegionMasks, keep_bytes, labels_png
from shared.kit.errors import ServiceError


class CountingMasks(RegionMasks):
    """Masks that count how often copies are made (frozen dataclass: the count lives in a list)."""

    def applied(self, pixels: np.ndarray, rows: slice | None = None) -> np.ndarray:
        made.append(pixels.shape)
        return super().applied(pixels, rows)


made: list[tuple[int, ...]] = []


def _labels() -> np.ndarray:
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[1:4, 1:7], labels[4:7, 1:7] = 1, 2
    return labels


def test_copies_are_made_once_per_size_and_only_when_asked(sample_images: dict[str, bytes]) -> None:
    made.clear()
    base = DecodedImage.decode(sample_images["glioma"])
    keep = np.array([[True, True], [False, True], [True, False], [False, False], [True, True]])
    masks = CountingMasks(_labels(), keep, "black")
    copies = MaskedCopies(base, masks, slice(1, 4))
    images = copies.images()
    assert len(images) == 3 and all(isinstance(image, MaskedImage) for image in images) and not made
    for size in (24, 32, 24, 32):
        for index, image in enumerate(images):
            assert np.array_equal(
                image.at(size), RegionMasks(_labels(), keep, "black").applied(base.at(size))[1 + index]
            )
    assert made == [(24, 24), (32, 32)]  # each size once for the whole run of copies


def test_a_copy_that_keeps_every_region_is_the_decoding_itself(sample_images: dict[str, bytes]) -> None:
    base = DecodedImage.decode(sample_images["meningioma"])
    (image,) = MaskedCopies(base, RegionMasks(_labels(), np.ones((1, 2), dtype=bool), "blur"), slice(0, 64)).images()
    assert np.array_equal(image.at(224), base.at(224))
    assert np.array_equal(np.asarray(image.gray), np.asarray(base.gray))
    assert image.data is None  # no file behind a copy


def test_gray_is_the_copy_at_the_decodings_own_size(sample_images: dict[str, bytes]) -> None:
    base = DecodedImage.decode(sample_images["pituitary"])
    (image,) = MaskedCopies(base, RegionMasks(_labels(), np.zeros((1, 2), dtype=bool), "black"), slice(0, 1)).images()
    gray = np.asarray(image.gray)
    assert gray.shape == np.asarray(base.gray).shape
    assert np.array_equal(gray, RegionMasks(_labels(), np.zeros((1, 2), dtype=bool), "black").applied(base.gray)[0])


def test_read_masks_answers_invalid_request_for_bad_masks() -> None:
    keep = np.ones((3, 2), dtype=bool)
    masks = read_masks(labels_png(_labels()), keep_bytes(keep), "grey", max_copies=3)
    assert masks.copies == 3 and masks.fill == "grey" and np.array_equal(masks.labels, _labels())
    with pytest.raises(ServiceError, match="more than 2 copies") as raised:
        read_masks(labels_png(_labels()), keep_bytes(keep), "grey", max_copies=2)
    assert raised.value.status == 422 and raised.value.details == {"max_copies": 2}
    with pytest.raises(ServiceError, match="Invalid masks: keep bytes must be 0") as raised:
        read_masks(labels_png(_labels()), b"\x03\x01", "grey", max_copies=2)
    assert raised.value.status == 422
