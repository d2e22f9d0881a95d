"""One frame of a multi-frame instance as a one-frame DICOM file, so that inference receives that frame's bytes,
not the whole instance once per frame (a 64-frame instance of 10 MiB would be 640 MiB, and an Enhanced MR file
above inference's upload limit would be refused for every frame).

Nothing is decoded here: the frame's stored bytes are cut out (native data), or its fragments taken out of the
encapsulated data (compressed syntaxes), and the header is kept, with the frame's own functional groups (its rescale
and window) as the only per-frame item. Inference decodes it as it decodes any file (shared/core/dicom.py). A layout
this cannot cut exactly (bit-packed 1-bit data, fragments that do not map to frames) returns None: the whole
instance is sent with inference's ``frame`` parameter instead.
"""

from __future__ import annotations

import copy
import logging

from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate, get_frame

from services.gateway.dicomweb.pacs import part10_bytes

logger = logging.getLogger(__name__)

# Left out of the copied header: rebuilt for the one frame.
REBUILT = ("PixelData", "NumberOfFrames", "PerFrameFunctionalGroupsSequence")


def single_frame(dataset: Dataset, index: int, frames: int) -> bytes | None:
    """Frame ``index`` (0-based) of a ``frames``-frame instance as a one-frame Part 10 file, or None."""
    try:
        pixels = _frame_pixels(dataset, index, frames)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        # The instance's own description of its pixel data does not add up: inference will say what is wrong.
        logger.info("frame not cut out of a multi-frame instance (%s)", type(exc).__name__)
        return None
    if pixels is None:
        return None
    one = FileDataset(None, {}, file_meta=copy.deepcopy(dataset.file_meta), preamble=b"\0" * 128)
    for element in dataset:
        if element.keyword not in REBUILT:
            one.add(copy.deepcopy(element))
    one.NumberOfFrames = 1
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == frames:
        one.PerFrameFunctionalGroupsSequence = [copy.deepcopy(per_frame[index])]
    one.PixelData = pixels
    # The element's VR comes with it from the source (OB or OW); an encapsulated value is always OB.
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        one["PixelData"].VR = "OB"
    return part10_bytes(one)


def _frame_pixels(dataset: Dataset, index: int, frames: int) -> bytes | None:
    data = dataset.PixelData
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        return encapsulate([get_frame(data, index, number_of_frames=frames)])
    bits = int(dataset.BitsAllocated)
    if bits % 8:
        return None  # bit-packed: frames need not start on a byte
    size = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1)) * bits // 8
    if len(data) < size * frames:
        return None
    frame = bytes(data[index * size : (index + 1) * size])
    return frame + b"\0" if len(frame) % 2 else frame  # a value's length is even
