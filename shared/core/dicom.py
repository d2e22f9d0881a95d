"""DICOM uploads: one frame of a DICOM Part 10 file to the 8-bit grayscale image the JPEG path produces.

The pixels go through the file's own display pipeline, as a viewer shows the slice: the modality transform
(rescale slope and intercept, or a modality LUT), then the file's VOI LUT or window centre/width, mapped onto
0..255; MONOCHROME1 is inverted so that more signal is always brighter. Colour files (RGB, YBR, palette) become
grayscale as colour JPEGs do. A multi-frame file needs a ``frame`` (0-based); a compressed transfer syntax without
an installed decoder is a 415 that names it.

No patient data ever leaves this module: error messages name only the transfer syntax, sizes and frame counts,
never an element's value, and pydicom's own warnings (which can quote values) are silenced at read time.
pydicom (the ``[serve]`` extra) is imported on first use, so a service without it still starts and answers a
DICOM upload with a clear 415.
"""

from __future__ import annotations

import io
import logging
import re
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shared.core.decoding import FULL_DECODE_MAX_SIDE, REDUCED_MIN_SIDE
from shared.kit.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

# A DICOM Part 10 file: a 128-byte preamble, then the magic "DICM", then the file meta information.
PREAMBLE_BYTES = 128
DICOM_MAGIC = b"DICM"

# Deflated datasets inflate without a bound that can be checked first (a small upload could expand to
# gigabytes): refused, as the image storage classes never need them.
REFUSED_SYNTAXES = {"1.2.840.10008.1.2.1.99": "it is deflated, which cannot be bounded before inflating"}

# What a UID may hold (PS3.5 9.1); anything else from the file is never echoed.
UID_PATTERN = re.compile(r"[0-9.]{1,64}")

# The one Modality (0008,0060) classified here; a file declaring another (CT, US, NM...) is not a brain MRI slice.
MR_MODALITY = "MR"
# A modality code as PS3.3 defines them (upper-case letters and digits): any other value is never echoed.
MODALITY_PATTERN = re.compile(r"[A-Z0-9]{1,16}")

# Photometric interpretations pydicom hands back as RGB (YBR ones are converted while decoding).
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")
GRAYSCALE_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")

# Enhanced (multi-frame) objects keep rescale and window per frame in functional groups, not at the top level.
FRAME_GROUP_ATTRIBUTES = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def is_dicom(data: bytes) -> bool:
    """Whether the bytes are a DICOM Part 10 file (the "DICM" magic after the 128-byte preamble).

    Files without the preamble are not taken for DICOM: read with ``force``, pydicom would accept almost
    any bytes, and every PACS export and DICOM writer produces Part 10 files.
    """
    return data[PREAMBLE_BYTES : PREAMBLE_BYTES + len(DICOM_MAGIC)] == DICOM_MAGIC


def read_dicom(data: bytes) -> Dataset:
    """A DICOM Part 10 file's dataset, read as decoding reads it (no pixel decoded, pydicom's warnings off, a
    deflated syntax refused); 415 INVALID_IMAGE for anything else, without a word of its content."""
    if not is_dicom(data):
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The file is not a DICOM Part 10 file (no DICM preamble).")
    return _read_dataset(_import_pydicom(), data)


def decode_dicom(data: bytes, frame: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """One frame of a DICOM Part 10 file as an 8-bit grayscale (mode L) image.

    ``frame`` is the 0-based frame index, required when the file holds more than one frame. Refuses with
    415 UNSUPPORTED_DICOM (no pixel data, a transfer syntax no installed decoder handles), 415 INVALID_IMAGE
    (unreadable file, more than ``max_pixels`` pixels) or 422 INVALID_REQUEST (frame missing or out of range).
    """
    pydicom = _import_pydicom()
    dataset = _read_dataset(pydicom, data)
    try:
        return _decode_dataset(dataset, frame, max_pixels)
    except ServiceError:
        raise
    except Exception as exc:
        # pydicom converts elements on first access, so a corrupt one fails wherever it is read, with any type
        # (and a text that may quote it); so do its window and LUT functions on values they cannot use.
        logger.info("DICOM upload not decodable (%s)", type(exc).__name__)
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            "The DICOM file could not be decoded: an element is corrupt, or its display attributes (rescale, "
            "window, lookup tables) cannot be applied to its pixels.",
        ) from exc


def _decode_dataset(dataset: Dataset, frame: int | None, max_pixels: int | None) -> Image.Image:
    if not any(key in dataset for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _unsupported("The DICOM file holds no image (no pixel data), e.g. a report or a plan.")
    index = choose_frame(_frame_count(dataset), frame)
    _check_size(dataset, max_pixels)
    syntax = _check_transfer_syntax(dataset)
    _apply_frame_groups(dataset, index)
    pixels = reduce_large_frame(_decode_frame(dataset, index, syntax))
    return Image.fromarray(display_pixels(pixels, dataset), mode="L")


def choose_frame(frames: int, frame: int | None) -> int:
    """The 0-based index of the frame to classify; 422 when a multi-frame file names none, or too high a one."""
    if frame is None:
        if frames > 1:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"The DICOM file holds {frames} frames; choose one with the `frame` query parameter "
                f"(0-based: 0 to {frames - 1}).",
                {"frames": frames},
            )
        return 0
    if not 0 <= frame < frames:
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"`frame` is {frame} but the DICOM file holds {frames} frame(s): choose 0 to {frames - 1}.",
            {"frames": frames},
        )
    return frame


def reduce_large_frame(pixels: np.ndarray) -> np.ndarray:
    """A frame whose longer side is above the JPEG path's full-decode size, box-averaged by a whole factor as
    that path reduces large images, before the display pipeline's float passes (a compressed upload can hold a
    frame of up to ``BT_DECODE_MAX_PIXELS``: its float64 copies would take hundreds of MB). Smaller frames, every
    MRI slice, are returned as they are. Stored values keep their type (a LUT is indexed by them)."""
    longer = max(pixels.shape[:2])
    # Never more than the shorter side: a 1-pixel-high strip stays one pixel high.
    factor = min(longer // REDUCED_MIN_SIDE, min(pixels.shape[:2]))
    if longer <= FULL_DECODE_MAX_SIDE or factor <= 1:
        return pixels
    rows, columns = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    blocks = pixels[:rows, :columns].reshape(rows // factor, factor, columns // factor, factor, *pixels.shape[2:])
    return np.rint(blocks.mean(axis=(1, 3))).astype(pixels.dtype)


def display_pixels(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """A decoded frame (rows, columns[, samples]) to uint8 grayscale through the file's display pipeline."""
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in GRAYSCALE_PHOTOMETRICS and pixels.ndim == 2:
        shown = grayscale_display(pixels, dataset)
        # MONOCHROME1: the lowest value is white. Inverted so that, as in MONOCHROME2 and the JPEGs, more is brighter.
        return 255 - shown if photometric == "MONOCHROME1" else shown
    if photometric in COLOUR_PHOTOMETRICS:
        return _colour_to_gray(pixels, dataset, photometric)
    raise _unsupported(
        "The DICOM file's photometric interpretation is not supported; expected "
        f"{', '.join(GRAYSCALE_PHOTOMETRICS + COLOUR_PHOTOMETRICS)}."
    )


def grayscale_display(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values -> modality values -> the VOI (LUT or window) -> 0..255.

    Without a VOI LUT or window, 8-bit unsigned data without a modality transform is shown as stored (the
    JPEG path's identity for an 8-bit grayscale image); anything else stretches the frame's min..max to 0..255,
    as the JPEG path does for a 16-bit PNG.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(pixels, dataset)
    if _has_voi_lut(dataset):
        low, high = _voi_lut_range(dataset)
        return _to_uint8(apply_voi_lut(_integral(values), dataset, index=0), low, high)
    if _has_window(dataset):
        low, high = _window_range(dataset)
        return _to_uint8(apply_voi_lut(values, dataset, index=0, prefer_lut=False), low, high)
    if pixels.dtype == np.uint8 and int(dataset.get("BitsStored", 8)) == 8 and _modality_is_identity(dataset):
        return np.asarray(pixels, dtype=np.uint8)
    return _to_uint8(values, float(np.min(values)), float(np.max(values)))


def declared_modality(data: bytes) -> str | None:
    """The Modality a DICOM upload declares (stripped, upper-case), from its header alone (read as decoding reads
    it: a deflated file is never inflated); None for a file that is not DICOM, that declares none, or whose header
    cannot be read. Never raises: decoding judges the file."""
    if not is_dicom(data):
        return None
    try:
        dataset = _read_dataset(_import_pydicom(), data, header_only=True)
        modality = str(dataset.get("Modality", "") or "").strip().upper()
    except Exception:  # an unreadable header is decoding's 415, not this function's
        return None
    return modality or None


def echoed_modality(modality: str) -> str:
    """A declared modality as an answer may repeat it: its code when it is a plain one, else "other"."""
    return modality if MODALITY_PATTERN.fullmatch(modality) else "other"


def _import_pydicom() -> Any:
    try:
        import pydicom
        import pydicom.config
    except ImportError as exc:
        raise _unsupported(
            "DICOM files are not supported by this installation (pydicom is missing: install the [serve] extra)."
        ) from exc
    # Reading must never warn with an element's value (e.g. an invalid PersonName) into the service log.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def _read_dataset(pydicom: Any, data: bytes, header_only: bool = False) -> Dataset:
    try:
        stream = io.BytesIO(data)
        pydicom.filereader.read_preamble(stream, False)
        # The meta group alone (pydicom's public read_file_meta_info wants a path): the syntax before any inflating.
        syntax = str(pydicom.filereader._read_file_meta_info(stream).get("TransferSyntaxUID", ""))
        if syntax in REFUSED_SYNTAXES:
            raise _unsupported(
                f"The DICOM file's transfer syntax ({syntax}) is not accepted: {REFUSED_SYNTAXES[syntax]}.", syntax
            )
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except ServiceError:
        raise
    except Exception as exc:  # pydicom raises many types for broken files; their text may quote values
        logger.info("unreadable DICOM upload (%s)", type(exc).__name__)
        raise ServiceError(
            ErrorCode.INVALID_IMAGE, "The file has a DICOM header but could not be read as a DICOM dataset."
        ) from exc


def _frame_count(dataset: Dataset) -> int:
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The DICOM file's number of frames is not a number.") from exc
    if frames < 1:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The DICOM file's number of frames is not positive.")
    return frames


def _check_size(dataset: Dataset, max_pixels: int | None) -> None:
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The DICOM file has no valid Rows and Columns.") from exc
    if rows < 1 or columns < 1:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The DICOM file's Rows and Columns are not positive.")
    if max_pixels is not None and rows * columns > max_pixels:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            f"The DICOM frame is {columns}x{rows} pixels; at most {max_pixels} pixels are accepted.",
        )


def _check_transfer_syntax(dataset: Dataset) -> Any:
    """The file's transfer syntax UID; 415 naming it when no installed decoder can handle its pixel data."""
    from pydicom.pixels import get_decoder

    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if not syntax:
        raise _unsupported("The DICOM file names no transfer syntax in its file meta information.")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise _unsupported(
            f"The DICOM file's transfer syntax {_syntax_name(syntax)} is not one pydicom can decode.", syntax
        ) from exc
    if not decoder.is_available:
        raise _unsupported(
            f"The DICOM file is compressed with {_syntax_name(syntax)}, for which no decoder is installed here "
            "(pylibjpeg or GDCM would be needed); send it uncompressed (Explicit VR Little Endian) instead.",
            syntax,
        )
    return syntax


def _apply_frame_groups(dataset: Dataset, index: int) -> None:
    """Copy the frame's rescale and window from the functional groups (shared, then its own) to the top level,
    where pydicom's modality and VOI functions read them. The dataset is this request's own copy."""
    groups = [dataset.get("SharedFunctionalGroupsSequence"), dataset.get("PerFrameFunctionalGroupsSequence")]
    items = [groups[0][0] if groups[0] else None, groups[1][index] if groups[1] and index < len(groups[1]) else None]
    for item in items:
        for sequence, keywords in FRAME_GROUP_ATTRIBUTES.items():
            if item is None or not item.get(sequence):
                continue
            values = item.get(sequence)[0]
            for keyword in keywords:
                if keyword in values:
                    setattr(dataset, keyword, values.get(keyword))


def _decode_frame(dataset: Dataset, index: int, syntax: Any) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return np.asarray(pixel_array(dataset, index=index))
    except Exception as exc:  # decoders raise many types; their text is not for the client
        logger.info("DICOM pixel data not decodable (%s, %s)", _syntax_name(syntax), type(exc).__name__)
        if syntax.is_compressed:
            raise _unsupported(
                f"The DICOM file's pixel data ({_syntax_name(syntax)}) could not be decoded by the installed "
                "decoders; send it uncompressed (Explicit VR Little Endian) instead.",
                syntax,
            ) from exc
        raise ServiceError(
            ErrorCode.INVALID_IMAGE, "The DICOM file's pixel data could not be decoded (truncated or inconsistent)."
        ) from exc


def _colour_to_gray(pixels: np.ndarray, dataset: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise _unsupported("The DICOM file's colour pixel data does not have three samples per pixel.")
    if pixels.dtype != np.uint8:
        # 16-bit colour (e.g. a palette with 16-bit entries): the full range of the container to 0..255.
        top = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else float(pixels.max())
        pixels = _to_uint8(pixels, 0.0, top or 1.0)
    # The same luma conversion as a colour JPEG gets (Pillow's RGB -> L).
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").convert("L"), dtype=np.uint8)


def _has_voi_lut(dataset: Dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _has_window(dataset: Dataset) -> bool:
    return dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None


def _voi_lut_range(dataset: Dataset) -> tuple[float, float]:
    """The VOI LUT's own output range, read through pydicom over every entry of the LUT."""
    from pydicom.pixels import apply_voi

    entries, first_mapped = (int(value) for value in dataset.VOILUTSequence[0].LUTDescriptor[:2])
    domain = np.arange(first_mapped, first_mapped + (entries or 2**16), dtype=np.int64)
    lut = apply_voi(domain, dataset, index=0)
    return float(lut.min()), float(lut.max())


def _window_range(dataset: Dataset) -> tuple[float, float]:
    """pydicom's windowing output range (its y_min and y_max: from bits stored, sign and rescale), found by
    windowing two values far outside any window rather than repeating pydicom's rule here."""
    from pydicom.pixels import apply_voi_lut

    with np.errstate(over="ignore"):
        ends = apply_voi_lut(np.array([-1e300, 1e300]), dataset, index=0, prefer_lut=False)
    return float(min(ends)), float(max(ends))


def _modality_is_identity(dataset: Dataset) -> bool:
    if dataset.get("ModalityLUTSequence"):
        return False
    return float(dataset.get("RescaleSlope", 1) or 1) == 1.0 and float(dataset.get("RescaleIntercept", 0) or 0) == 0.0


def _integral(values: np.ndarray) -> np.ndarray:
    # A LUT is indexed by integers; rescaled values are floats that are whole numbers in practice.
    return values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _syntax_name(syntax: Any) -> str:
    """The name and UID, e.g. "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"; a UID unknown to pydicom is
    echoed only if it looks like a UID (the file is the client's: nothing else from it is echoed)."""
    uid = str(syntax)
    if not UID_PATTERN.fullmatch(uid):
        return "(not a valid UID)"
    name = getattr(syntax, "name", "")
    return f"{name} ({uid})" if name and name != uid else uid


def _unsupported(message: str, syntax: Any = None) -> ServiceError:
    details = {"transfer_syntax": str(syntax)} if syntax and UID_PATTERN.fullmatch(str(syntax)) else None
    return ServiceError(ErrorCode.UNSUPPORTED_DICOM, message, details)
