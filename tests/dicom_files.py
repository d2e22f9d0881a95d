"""DICOM Part 10 files written with pydicom from arrays, for the DICOM tests (tests/shared and tests/services).

Every file carries patient data (``PATIENT_NAME``, an ID, a birth date) so that tests can check none of it
is ever echoed or logged.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

# Unusual enough that finding it anywhere means it leaked.
PATIENT_NAME = "Quixotewell^Zephyrine"
PATIENT_ID = "PID-73519-QZ"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    frames: bool = False,
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: Sequence[int] | None = None,
    voi_lut_first: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    with_pixels: bool = True,
    modality: str = "MR",
) -> bytes:
    """A Part 10 file holding ``pixels``: (rows, columns), (rows, columns, 3) for RGB, or (frames, rows, columns)
    with ``frames``. uint8 or (u)int16; ``rescale`` is (slope, intercept), ``window`` (centre, width),
    ``voi_lut`` the entries of a VOI LUT with 16-bit output starting at stored value ``voi_lut_first``."""
    compressed = UID(transfer_syntax).is_compressed
    dataset = _dataset(ExplicitVRLittleEndian if compressed else transfer_syntax)
    dataset.Modality = modality
    colour = photometric in ("RGB", "YBR_FULL")
    rows, columns = pixels.shape[1:3] if frames else pixels.shape[:2]
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    dataset.BitsAllocated = allocated
    dataset.BitsStored = bits_stored or allocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    if frames:
        dataset.NumberOfFrames = len(pixels)
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = (f"{value:g}" for value in rescale)
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = (f"{value:g}" for value in window)
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), voi_lut_first, 16]
        # LUT Data may be US or OW: a list of values is US.
        item.add_new("LUTData", "US", [int(value) for value in voi_lut])
        dataset.VOILUTSequence = [item]
    if with_pixels:
        dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compressed:
        dataset.compress(transfer_syntax, encoding_plugin="pydicom")
    return to_bytes(dataset)


def to_bytes(dataset: FileDataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_patient_name(path: Path) -> bytes:
    """A file pydicom ships, re-written with this module's patient data (its pixel data kept as it is)."""
    dataset = pydicom.dcmread(path)
    dataset.PatientName, dataset.PatientID = PATIENT_NAME, PATIENT_ID
    return to_bytes(dataset)


def example_file(name: str) -> Path:
    """One of the test files inside the pydicom package (never downloaded)."""
    return Path(get_testdata_file(name, download=False))


def _dataset(transfer_syntax: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = "19610412"
    dataset.StudyDate = "20261201"
    return dataset
