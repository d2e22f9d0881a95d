"""A demonstration MR series from the embedded sample: `python -m deploy.sample_series OUT_DIR [--slices 24]`.

Writes 8-bit MR slices (DICOM Part 10, one new study and series, a made-up patient "Demo^Patient") into OUT_DIR, to
store into a PACS and pull through the gateway (docs/hospital.md); benchmarks.dicomweb uses the same series.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from shared.core.dataset import SAMPLE_DATA_DIR

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def series_files(count: int) -> tuple[str, list[bytes]]:
    """``count`` 8-bit MR slices of one new study and series, from the sample JPEGs (classes interleaved)."""
    paths = sorted(SAMPLE_DATA_DIR.glob("*/*.jpg"))
    chosen = [paths[(index * 7) % len(paths)] for index in range(count)]
    study, series = generate_uid(), generate_uid()
    files = []
    for number, path in enumerate(chosen, start=1):
        pixels = np.asarray(Image.open(path).convert("L"))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_IMAGE_STORAGE, generate_uid()
        meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "MR"
        ds.PatientName, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "Demo^Patient", "DEMO-1", 1, number
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return study, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.sample_series", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the slices to")
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    study, files = series_files(args.slices)
    for number, data in enumerate(files, start=1):
        (args.out / f"slice-{number:03d}.dcm").write_bytes(data)
    print(f"{len(files)} slices in {args.out}; StudyInstanceUID {study}")  # noqa: T201 - a CLI
    return 0


if __name__ == "__main__":
    sys.exit(main())
