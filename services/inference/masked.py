"""Copies of one decoded upload with regions hidden (``shared.core.masking``), as images the servables read.

A servable's ``preprocess`` asks each image for its pixels at the servable's own size (``DecodedImage.at``); an
ensemble asks once per member size. ``MaskedCopies`` answers a run of copies at a size by resizing the one
decoding to it (as ``/v1/predict`` does) and hiding each copy's regions there, once per size, when first asked.
So every model, and every member of an ensemble, sees its own resize with the same regions hidden, and a copy
that keeps every region is exactly the image ``/v1/predict`` classifies.

``read_masks`` turns a request's ``regions`` PNG and ``keep`` bytes into ``RegionMasks``, bad masks a 422.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.core.imaging import DecodedImage
from shared.core.masking import Fill, MaskError, RegionMasks, keep_from_bytes, labels_from_png
from shared.kit.errors import ErrorCode, ServiceError


class MaskedCopies:
    """Copies ``rows`` of ``base`` with their regions hidden, made at each size the first time it is asked for."""

    def __init__(self, base: DecodedImage, masks: RegionMasks, rows: slice) -> None:
        self.base, self.masks, self.rows = base, masks, rows
        self.count = len(range(*rows.indices(masks.copies)))
        self._sizes: dict[int, np.ndarray] = {}
        self._decoded: np.ndarray | None = None

    def at(self, size: int) -> np.ndarray:
        """The copies as (count, size, size) uint8: the decoding resized to ``size``, then masked."""
        copies = self._sizes.get(size)
        if copies is None:
            copies = self._sizes[size] = self.masks.applied(self.base.at(size), self.rows)
        return copies

    def decoded(self) -> np.ndarray:
        """The copies at the decoding's own resolution (count, H, W), for readers of ``gray``."""
        if self._decoded is None:
            self._decoded = self.masks.applied(np.asarray(self.base.gray, dtype=np.uint8), self.rows)
        return self._decoded

    def images(self) -> list[DecodedImage]:
        """One image per copy, in row order."""
        return [MaskedImage(self, index) for index in range(self.count)]


class MaskedImage(DecodedImage):
    """Copy ``index`` of a ``MaskedCopies``: no file behind it, its pixels at any size those of the copy."""

    def __init__(self, copies: MaskedCopies, index: int) -> None:
        super().__init__(None)
        self._copies, self._index = copies, index

    @property
    def gray(self) -> Image.Image:
        return Image.fromarray(self._copies.decoded()[self._index], mode="L")

    def at(self, size: int) -> np.ndarray:
        return self._copies.at(size)[self._index]


def too_many_copies(max_copies: int) -> ServiceError:
    return ServiceError(
        ErrorCode.INVALID_REQUEST,
        f"keep holds more than {max_copies} copies (rows); send at most {max_copies} per request.",
        {"max_copies": max_copies},
    )


def read_masks(regions_png: bytes, keep: bytes, fill: Fill, max_copies: int) -> RegionMasks:
    """The masks a request describes: the label map in ``regions_png``, one ``keep`` row of R bytes per copy
    (R = the largest label). INVALID_REQUEST naming the problem when they do not fit or hold too many copies."""
    try:
        labels = labels_from_png(regions_png)
        regions = int(labels.max())
        if regions >= 1 and len(keep) > max_copies * regions:
            raise too_many_copies(max_copies)
        return RegionMasks(labels, keep_from_bytes(keep, regions), fill)
    except MaskError as exc:
        raise ServiceError(ErrorCode.INVALID_REQUEST, f"Invalid masks: {exc}.") from exc
