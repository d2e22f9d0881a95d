"""DICOM uploads decode to the same 8-bit grayscale image as the JPEG they were written from, through the file's
display pipeline (rescale, VOI LUT or window, MONOCHROME1), one frame at a time; what cannot be decoded is a 415
that names the transfer syntax; no patient data is ever echoed or logged."""

from __future__ import annotations

import logging
import random
import sys
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from shared.core.dicom import declared_modality, decode_dicom, echoed_modality, is_dicom
from shared.core.imaging import decode_grayscale, decode_to_array
from shared.kit.errors import ErrorCode, ServiceError
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, example_file, to_bytes, with_patient_name, write_dicom


@pytest.fixture(scope="module")
def jpeg(sample_images: dict[str, bytes]) -> bytes:
    return sample_images["glioma"]


@pytest.fixture(scope="module")
def gray(jpeg: bytes) -> np.ndarray:
    """The JPEG as the JPEG path decodes it: what every DICOM written from it must decode to."""
    return np.asarray(decode_grayscale(jpeg))


def pixels_of(data: bytes, frame: int | None = None) -> np.ndarray:
    image = decode_grayscale(data, frame)
    assert image.mode == "L"
    return np.asarray(image)


def stretched(values: np.ndarray) -> np.ndarray:
    """min..max to 0..255, rounded: the mapping without a window (in the JPEG path's order of operations)."""
    low, high = float(values.min()), float(values.max())
    return np.rint((values.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)


def refused(data: bytes, code: ErrorCode, frame: int | None = None) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode_grayscale(data, frame)
    assert caught.value.code == code, caught.value.message
    text = f"{caught.value.message} {caught.value.details}"
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text
    return caught.value


# -- detection ---------------------------------------------------------------------------------------


def test_part10_files_are_detected_by_the_magic_after_the_preamble(gray: np.ndarray, jpeg: bytes) -> None:
    assert is_dicom(write_dicom(gray))
    assert not is_dicom(jpeg)
    assert not is_dicom(b"DICM" + bytes(200))  # the magic at the start is not a Part 10 file
    assert not is_dicom(b"")
    # A dataset without preamble and meta information is not taken for DICOM (and is not an image either).
    refused(example_file("no_meta.dcm").read_bytes(), ErrorCode.INVALID_IMAGE)


# -- the same pixels as the JPEG -----------------------------------------------------------------------


def test_the_declared_modality_is_read_from_the_header(gray: np.ndarray) -> None:
    assert declared_modality(write_dicom(gray, modality="ct ")) == "CT"
    assert declared_modality(write_dicom(gray)) == "MR"
    assert declared_modality(example_file("CT_small.dcm").read_bytes()) == "CT"
    assert declared_modality(example_file("MR_small.dcm").read_bytes()) == "MR"


def test_a_modality_that_is_absent_or_unreadable_is_none(gray: np.ndarray, jpeg: bytes) -> None:
    """Never raises: decoding judges the file."""
    assert declared_modality(jpeg) is None
    assert declared_modality(write_dicom(gray, modality="")) is None
    assert declared_modality(write_dicom(gray, modality="CT")[:140]) is None


def test_only_a_plain_modality_code_is_ever_echoed(gray: np.ndarray) -> None:
    odd = declared_modality(write_dicom(gray, modality="C T<script>"))
    assert odd is not None and odd != "MR"  # still another modality than MR
    assert echoed_modality(odd) == "other"
    assert echoed_modality("CT") == "CT"


def test_8bit_without_window_is_the_jpeg_as_decoded(gray: np.ndarray) -> None:
    np.testing.assert_array_equal(pixels_of(write_dicom(gray)), gray)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless])
def test_other_transfer_syntaxes_decode_alike(gray: np.ndarray, syntax: str) -> None:
    np.testing.assert_array_equal(pixels_of(write_dicom(gray, transfer_syntax=syntax)), gray)


def test_16bit_rescaled_and_windowed_over_the_8bit_range_is_the_jpeg(gray: np.ndarray) -> None:
    # Stored = 16 g + 100; slope and intercept give g back; centre 128, width 256 shows 0..255 as is
    # (PS3.3 C.11.2.1.2.1).
    stored = gray.astype(np.uint16) * 16 + 100
    data = write_dicom(stored, bits_stored=12 + 1, rescale=(0.0625, -6.25), window=(128, 256))
    np.testing.assert_array_equal(pixels_of(data), gray)


def test_16bit_without_window_stretches_min_to_max(gray: np.ndarray) -> None:
    stored = gray.astype(np.uint16) * 16 + 100
    np.testing.assert_array_equal(pixels_of(write_dicom(stored, rescale=(0.0625, -6.25))), stretched(gray))
    np.testing.assert_array_equal(pixels_of(write_dicom(stored, bits_stored=13)), stretched(gray))


def test_signed_values_with_intercept_decode(gray: np.ndarray) -> None:
    stored = gray.astype(np.int16) - 1000
    data = write_dicom(stored, rescale=(1, 1000), window=(128, 256))
    np.testing.assert_array_equal(pixels_of(data), gray)


def test_monochrome1_is_inverted_back(gray: np.ndarray) -> None:
    np.testing.assert_array_equal(pixels_of(write_dicom(255 - gray, photometric="MONOCHROME1")), gray)


def test_a_narrow_window_follows_the_dicom_linear_function(gray: np.ndarray) -> None:
    centre, width = 90.0, 61.0
    # PS3.3 C.11.2.1.2.1, computed here independently of pydicom.
    x = gray.astype(np.float64)
    expected = ((x - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    expected[x <= centre - 0.5 - (width - 1) / 2] = 0
    expected[x > centre - 0.5 + (width - 1) / 2] = 255
    got = pixels_of(write_dicom(gray, window=(centre, width)))
    assert np.abs(got.astype(int) - np.rint(expected).astype(int)).max() <= 1
    assert (got == 0).mean() > 0.2, "the dark background is below the window"


def test_a_voi_lut_is_applied_over_its_own_output_range(gray: np.ndarray) -> None:
    # A LUT that squares the 8-bit value into 0..65025: dark parts get darker.
    lut = [value * value for value in range(256)]
    got = pixels_of(write_dicom(gray, voi_lut=lut, window=(128, 256)))  # the LUT wins over the window
    expected = np.rint(gray.astype(np.float64) ** 2 * 255.0 / 255**2).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_rgb_decodes_as_a_colour_jpeg_does(gray: np.ndarray) -> None:
    rgb = np.stack([gray, np.roll(gray, 3, axis=1), 255 - gray], axis=-1)
    expected = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"))
    np.testing.assert_array_equal(pixels_of(write_dicom(rgb, photometric="RGB")), expected)


# -- frames --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_frames(gray: np.ndarray) -> bytes:
    return write_dicom(np.stack([255 - gray, gray, gray // 2]), frames=True)


def test_a_multi_frame_file_needs_a_frame(three_frames: bytes) -> None:
    error = refused(three_frames, ErrorCode.INVALID_REQUEST)
    assert "3 frames" in error.message and "frame" in error.message
    assert error.details == {"frames": 3}


def test_the_chosen_frame_is_decoded(three_frames: bytes, gray: np.ndarray) -> None:
    np.testing.assert_array_equal(pixels_of(three_frames, 1), gray)
    np.testing.assert_array_equal(pixels_of(three_frames, 0), 255 - gray)


@pytest.mark.parametrize("frame", [3, 1000])
def test_a_frame_out_of_range_is_refused(three_frames: bytes, frame: int) -> None:
    assert "0 to 2" in refused(three_frames, ErrorCode.INVALID_REQUEST, frame).message


def test_frame_on_a_one_frame_file(gray: np.ndarray, jpeg: bytes) -> None:
    np.testing.assert_array_equal(pixels_of(write_dicom(gray), 0), gray)
    refused(write_dicom(gray), ErrorCode.INVALID_REQUEST, 1)
    np.testing.assert_array_equal(pixels_of(jpeg, 0), gray)
    refused(jpeg, ErrorCode.INVALID_REQUEST, 1)


def test_per_frame_windows_of_an_enhanced_file_are_used(gray: np.ndarray) -> None:
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(write_dicom(np.stack([gray, gray]), frames=True)))
    per_frame = []
    for centre, width in ((128, 256), (90, 61)):
        window = pydicom.Dataset()
        window.WindowCenter, window.WindowWidth = centre, width
        group = pydicom.Dataset()
        group.FrameVOILUTSequence = [window]
        per_frame.append(group)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    data = to_bytes(dataset)
    np.testing.assert_array_equal(pixels_of(data, 0), gray)
    np.testing.assert_array_equal(pixels_of(data, 1), pixels_of(write_dicom(gray, window=(90, 61))))


def test_decode_to_array_passes_the_frame(three_frames: bytes, jpeg: bytes) -> None:
    np.testing.assert_array_equal(decode_to_array(three_frames, 32, 1), decode_to_array(jpeg, 32))


# -- pydicom's own example files ------------------------------------------------------------------------


def test_pydicom_mr_example_is_windowed_as_its_file_says() -> None:
    dataset = pydicom.dcmread(example_file("MR_small.dcm"))
    centre, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    stored = dataset.pixel_array.astype(np.float64)
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    expected = np.clip((stored - low) / (high - low), 0, 1) * 255.0
    got = pixels_of(example_file("MR_small.dcm").read_bytes())
    assert got.shape == stored.shape
    assert np.abs(got.astype(int) - np.rint(expected).astype(int)).max() <= 1


def test_pydicom_ct_example_without_window_stretches_its_hounsfield_units() -> None:
    dataset = pydicom.dcmread(example_file("CT_small.dcm"))
    units = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    np.testing.assert_array_equal(pixels_of(example_file("CT_small.dcm").read_bytes()), stretched(units))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"])
def test_syntaxes_with_a_decoder_here_give_the_uncompressed_pixels(name: str) -> None:
    reference = pixels_of(example_file("MR_small.dcm").read_bytes())
    np.testing.assert_array_equal(pixels_of(example_file(name).read_bytes()), reference)


def test_jpeg_baseline_decodes_through_pillow() -> None:
    lossy = pixels_of(example_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes()).astype(int)
    lossless = pixels_of(example_file("SC_rgb_rle.dcm").read_bytes()).astype(int)
    assert lossy.shape == lossless.shape == (100, 100)
    assert np.abs(lossy - lossless).mean() < 3


def test_palette_colour_decodes_to_gray() -> None:
    assert pixels_of(example_file("examples_palette.dcm").read_bytes()).shape == (800, 350)[::-1]


@pytest.mark.parametrize(
    ("name", "syntax_name", "uid"),
    [
        ("JPGExtended.dcm", "JPEG Extended", "1.2.840.10008.1.2.4.51"),  # Pillow has no 12-bit JPEG
        # No decoder installed (JPEG-LS has one where pyjpegls is: highdicom's dependency, pinned in [serve]).
        ("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless", "1.2.840.10008.1.2.4.70"),
    ],
)
def test_a_syntax_without_a_working_decoder_is_a_415_naming_it(name: str, syntax_name: str, uid: str) -> None:
    error = refused(with_patient_name(example_file(name)), ErrorCode.UNSUPPORTED_DICOM)
    assert error.status == 415
    assert syntax_name in error.message and uid in error.message
    assert error.details == {"transfer_syntax": uid}


def test_a_deflated_file_is_refused_before_inflating() -> None:
    error = refused(example_file("image_dfl.dcm").read_bytes(), ErrorCode.UNSUPPORTED_DICOM)
    assert "1.2.840.10008.1.2.1.99" in error.message


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm"])
def test_a_dicom_without_pixel_data_is_a_415(name: str) -> None:
    assert "no pixel data" in refused(with_patient_name(example_file(name)), ErrorCode.UNSUPPORTED_DICOM).message


def test_files_written_without_pixels_or_truncated_are_refused(gray: np.ndarray) -> None:
    refused(write_dicom(gray, with_pixels=False), ErrorCode.UNSUPPORTED_DICOM)
    refused(write_dicom(gray)[:-500], ErrorCode.INVALID_IMAGE)
    # Cut inside the header: pydicom reads what is there, which holds no pixel data.
    refused(write_dicom(gray)[:200], ErrorCode.UNSUPPORTED_DICOM)
    refused(example_file("MR_truncated.dcm").read_bytes(), ErrorCode.INVALID_IMAGE)


def test_a_frame_larger_than_the_pixel_limit_is_refused_before_decoding(gray: np.ndarray) -> None:
    with pytest.raises(ServiceError) as caught:
        decode_dicom(write_dicom(gray), max_pixels=gray.size - 1)
    assert caught.value.code == ErrorCode.INVALID_IMAGE


def test_a_frame_above_the_full_decode_size_is_box_reduced_as_large_images_are() -> None:
    # Longer side 2050 (above 2048): reduced by 2050 // 1024 = 2, by averaging 2x2 blocks of stored values.
    stored = np.tile(np.arange(2050, dtype=np.uint16) % 256, (6, 1)).astype(np.uint8)
    got = pixels_of(write_dicom(stored))
    expected = np.rint(stored[:, :2050].reshape(3, 2, 1025, 2).mean(axis=(1, 3))).astype(np.uint8)
    assert got.shape == (3, 1025)
    np.testing.assert_array_equal(got, expected)


def test_corrupted_headers_are_client_errors_never_crashes(gray: np.ndarray) -> None:
    # pydicom parses elements on first access: a corrupt one can fail anywhere, with any exception type.
    rng = random.Random(17)
    small = gray[:24, :20]
    bases = [
        write_dicom(small),
        write_dicom(small.astype(np.uint16) * 16, bits_stored=12, rescale=(0.5, -3), window=(40, 80)),
        write_dicom(np.stack([small, small]), frames=True),
        write_dicom(255 - small, photometric="MONOCHROME1", voi_lut=list(range(256))),
    ]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(132, 700)] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(132, len(data))]
        try:
            decode_grayscale(bytes(data), rng.choice([None, 0, 1]))
            outcomes["decoded"] += 1
        except ServiceError as exc:
            assert 400 <= exc.status < 500, exc.message
            outcomes["refused"] += 1
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0


# -- patient data --------------------------------------------------------------------------------------


def test_no_patient_data_in_errors_logs_or_warnings(
    gray: np.ndarray, three_frames: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # An invalid person name (six components) is what would make pydicom warn with the value.
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(write_dicom(gray)))
    dataset.PatientName = f"{PATIENT_NAME}^a^b^c^d"
    cases = [
        (to_bytes(dataset), None),
        (three_frames, None),
        (three_frames, 7),
        (with_patient_name(example_file("MR_small_jpeg_ls_lossless.dcm")), None),
        (write_dicom(gray)[:-500], None),
    ]
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data, frame in cases:
            try:
                decode_grayscale(data, frame)
            except ServiceError as exc:
                assert PATIENT_NAME.split("^")[0] not in f"{exc.message} {exc.details}"
    said = caplog.text + " ".join(str(warning.message) for warning in caught)
    assert PATIENT_NAME.split("^")[0] not in said and PATIENT_ID not in said


def test_without_pydicom_a_dicom_upload_is_a_clear_415(gray: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_dicom(gray)
    # What a service installed without the [serve] extra answers (None in sys.modules makes the import fail).
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert "pydicom" in refused(data, ErrorCode.UNSUPPORTED_DICOM).message
