"""A frame cut out of a multi-frame instance (services/gateway/dicomweb/frames.py) decodes, through the one DICOM
decoder, to exactly what that frame of the whole instance decodes to: native 8- and 16-bit data, RLE-compressed data,
and per-frame windows of an Enhanced MR file; and it is smaller than the instance it comes from."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from services.gateway.dicomweb.frames import single_frame
from shared.core.imaging import decode_grayscale
from tests.dicom_files import to_bytes, write_dicom
from tests.dicom_study import gray, sample_jpegs


@pytest.fixture(scope="module")
def slices() -> list[np.ndarray]:
    return [gray(jpeg) for jpeg in sample_jpegs(1)[:3]]


def with_per_frame_windows(data: bytes, windows: list[tuple[int, int]]) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    groups = []
    for centre, width in windows:
        window = pydicom.Dataset()
        window.WindowCenter, window.WindowWidth = centre, width
        group = pydicom.Dataset()
        group.FrameVOILUTSequence = [window]
        groups.append(group)
    dataset.PerFrameFunctionalGroupsSequence = groups
    return to_bytes(dataset)


@pytest.mark.parametrize("layout", ["8-bit", "16-bit rescaled", "RLE", "per-frame windows"])
def test_a_cut_frame_decodes_as_that_frame_of_the_instance(slices: list[np.ndarray], layout: str) -> None:
    stack = np.stack(slices)
    data = {
        "8-bit": lambda: write_dicom(stack, frames=True),
        "16-bit rescaled": lambda: write_dicom(
            stack.astype(np.uint16) * 16 + 100, frames=True, bits_stored=13, rescale=(0.0625, -6.25), window=(128, 256)
        ),
        "RLE": lambda: write_dicom(stack, frames=True, transfer_syntax=RLELossless),
        "per-frame windows": lambda: with_per_frame_windows(
            write_dicom(stack, frames=True), [(128, 256), (90, 61), (60, 40)]
        ),
    }[layout]()
    dataset = pydicom.dcmread(io.BytesIO(data))
    for index in range(len(slices)):
        alone = single_frame(dataset, index, len(slices))
        assert alone is not None and len(alone) < len(data)
        assert pydicom.dcmread(io.BytesIO(alone)).NumberOfFrames == 1
        np.testing.assert_array_equal(np.asarray(decode_grayscale(alone)), np.asarray(decode_grayscale(data, index)))


def test_bit_packed_data_is_not_cut() -> None:
    dataset = pydicom.dcmread(io.BytesIO(write_dicom(np.zeros((2, 8, 8), np.uint8), frames=True)))
    dataset.BitsAllocated = 1
    assert single_frame(dataset, 1, 2) is None
