"""A DICOM study made from the embedded sample images, as a PACS would hold it: MR series written the ways scanners
write them (8-bit; 16-bit with rescale and window; MONOCHROME1; one multi-frame instance), an MR slice that is no
brain (a page of text, which the guard refuses), a CT instance and an encapsulated PDF. Every instance carries the
patient data of tests/dicom_files.py, so that tests can check it never leaks.

Each slice remembers the JPEG whose decoded pixels it holds: /v1/predict on that JPEG is what the slice must answer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from shared.core.dataset import SAMPLE_DATA_DIR
from shared.core.imaging import decode_grayscale
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, to_bytes, write_dicom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


@dataclass(frozen=True)
class Slice:
    """One classifiable slice: an instance, or one frame of a multi-frame instance, and its source JPEG."""

    sop_uid: str
    series_uid: str
    frame: int | None
    jpeg: bytes
    kind: str


@dataclass
class Study:
    study_uid: str
    files: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> Part 10 file
    series: dict[str, str] = field(default_factory=dict)  # kind -> Series Instance UID
    slices: list[Slice] = field(default_factory=list)
    not_mr: dict[str, str | None] = field(default_factory=dict)  # SOP Instance UID -> modality (None: none given)
    not_a_brain: list[str] = field(default_factory=list)  # MR instances the guard refuses

    def add(self, kind: str, data: bytes) -> Dataset:
        """Put a file into ``kind``'s series of this study (one series per kind), numbered in order."""
        dataset = pydicom.dcmread(io.BytesIO(data))
        series_uid = self.series.setdefault(kind, generate_uid())
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = self.study_uid, series_uid
        dataset.SeriesNumber = list(self.series).index(kind) + 1
        dataset.InstanceNumber = sum(1 for uid in self.files if _series_of(self.files[uid]) == series_uid) + 1
        dataset.StudyID, dataset.AccessionNumber, dataset.StudyTime = "BT1", "ACC-1", "101500"
        dataset.PatientSex, dataset.ReferringPhysicianName = "O", ""
        dataset.SeriesDescription = f"test {kind}"
        self.files[str(dataset.SOPInstanceUID)] = to_bytes(dataset)
        return dataset


def _series_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID)


def sample_jpegs(per_class: int) -> list[bytes]:
    """``per_class`` sample JPEGs of each class, classes interleaved."""
    by_class = [
        sorted(folder.glob("*.jpg"))[:per_class] for folder in sorted(SAMPLE_DATA_DIR.iterdir()) if folder.is_dir()
    ]
    return [paths[index].read_bytes() for index in range(per_class) for paths in by_class if index < len(paths)]


def gray(jpeg: bytes) -> np.ndarray:
    return np.asarray(decode_grayscale(jpeg))


def page_of_text() -> np.ndarray:
    """Not a brain: the guard refuses it (tests/e2e's page of text)."""
    page = Image.new("L", (256, 256), 255)
    draw = ImageDraw.Draw(page)
    for row in range(0, 256, 16):
        draw.text((4, row), "Discharge summary: seen in clinic, follow-up in six weeks.", fill=0)
    return np.asarray(page)


def make_study() -> Study:
    """The study the DICOMweb tests upload: 4 + 2 + 2 single-frame slices, 3 frames, 1 refused MR, CT, PDF, and an
    image without a modality."""
    study = Study(generate_uid())
    jpegs = sample_jpegs(2)

    def slice_of(kind: str, data: bytes, jpeg: bytes, frame: int | None = None) -> None:
        dataset = study.add(kind, data)
        study.slices.append(Slice(str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), frame, jpeg, kind))

    for jpeg in jpegs[:4]:
        slice_of("8-bit", write_dicom(gray(jpeg)), jpeg)
    for jpeg in jpegs[4:6]:
        sixteen = gray(jpeg).astype(np.uint16) * 16 + 100
        slice_of("16-bit", write_dicom(sixteen, bits_stored=13, rescale=(0.0625, -6.25), window=(128, 256)), jpeg)
    for jpeg in jpegs[6:8]:
        slice_of("MONOCHROME1", write_dicom(255 - gray(jpeg), photometric="MONOCHROME1"), jpeg)
    frames = jpegs[1:4]
    dataset = study.add("multi-frame", _enhanced(write_dicom(np.stack([gray(jpeg) for jpeg in frames]), frames=True)))
    for index, jpeg in enumerate(frames):
        study.slices.append(
            Slice(str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), index, jpeg, "multi-frame")
        )
    refused = study.add("8-bit", write_dicom(page_of_text()))
    study.not_a_brain.append(str(refused.SOPInstanceUID))
    ct = study.add("CT", _ct(gray(jpegs[0])))
    study.not_mr[str(ct.SOPInstanceUID)] = "CT"
    pdf = study.add("PDF", _pdf())
    study.not_mr[str(pdf.SOPInstanceUID)] = "DOC"
    # An image without a modality: a search cannot tell, so the gateway fetches it and its header decides.
    unnamed = study.add("no modality", _without_modality(write_dicom(gray(jpegs[1]))))
    study.not_mr[str(unnamed.SOPInstanceUID)] = None
    return study


def _enhanced(data: bytes) -> bytes:
    """Multi-frame MR as scanners write it: the Enhanced MR storage class, whose frames a report can reference."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    return to_bytes(dataset)


def _without_modality(data: bytes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    del dataset.Modality
    return to_bytes(dataset)


def _ct(pixels: np.ndarray) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(write_dicom(pixels.astype(np.int16) - 1000, rescale=(1, 0))))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    dataset.Modality = "CT"
    return to_bytes(dataset)


def _pdf() -> bytes:
    """An Encapsulated PDF Storage instance: no pixels, modality DOC."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = ENCAPSULATED_PDF_STORAGE, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DOC"
    dataset.PatientName, dataset.PatientID = PATIENT_NAME, PATIENT_ID
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.DocumentTitle = "referral letter"
    dataset.BurnedInAnnotation = "YES"
    dataset.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return to_bytes(dataset)


def stow_body(files: list[bytes], boundary: str = "bt-dicom-part") -> tuple[bytes, str]:
    """A STOW-RS body: ``multipart/related; type="application/dicom"``, one Part 10 file per part."""
    chunks = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in files]
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
