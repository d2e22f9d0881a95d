"""A STOW-RS-style body: ``multipart/related; type="application/dicom"``, one DICOM Part 10 file per part.

The route bounds the body as it arrives (``dicomweb_max_push_bytes``); this module splits it
with python-multipart's streaming parser and reads each part's header with the one DICOM reader
(shared.core.dicom). What is refused and why is said without any of the content.
"""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.gateway.dicomweb.classify import SourceInstance
from shared.core.dicom import read_dicom
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.uploads import too_large

DICOM_MEDIA_TYPE = b"application/dicom"
STOW_CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=...'


def invalid(message: str) -> ServiceError:
    return ServiceError(ErrorCode.INVALID_REQUEST, message)


def split_parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related body of DICOM files; 422 for another content type or broken framing."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/related" or not boundary:
        raise invalid(f"Expected a body of content type {STOW_CONTENT_TYPE}, one DICOM file per part.")
    if options.get(b"type", DICOM_MEDIA_TYPE).lower() != DICOM_MEDIA_TYPE:
        raise invalid('Only type="application/dicom" is accepted: DICOM Part 10 files, one per part.')
    parts: list[bytearray] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1] += data[start:end]

    parser = MultipartParser(
        boundary, {"on_part_begin": lambda: parts.append(bytearray()), "on_part_data": on_part_data}
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise invalid("The multipart/related body could not be parsed (check its boundary).") from exc
    if not parts:
        raise invalid("The body holds no DICOM file.")
    return [bytes(part) for part in parts]


def read_instances(parts: list[bytes], max_instances: int, max_file_bytes: int) -> list[SourceInstance]:
    """Each part as an instance of one study; 413 above ``max_instances`` or for a part above ``max_file_bytes``
    (the upload limit of every other route), 415 for a part that is not DICOM."""
    if len(parts) > max_instances:
        raise too_many(len(parts), max_instances)
    if any(len(part) > max_file_bytes for part in parts):
        raise too_large(max_file_bytes)
    instances = [SourceInstance(read_dicom(part), part) for part in parts]
    studies = {str(instance.dataset.get("StudyInstanceUID", "")) for instance in instances}
    if len(studies) != 1 or "" in studies:
        raise invalid(f"The instances must belong to one study (they name {len(studies)} study UIDs or none).")
    for instance in instances:
        if not instance.dataset.get("SOPInstanceUID") or not instance.dataset.get("SeriesInstanceUID"):
            raise invalid("Every instance needs a SOP Instance UID and a Series Instance UID.")
    return instances


def too_many(count: int, limit: int, *, counted: bool = True, what: str = "instances") -> ServiceError:
    """413 TOO_MANY_INSTANCES; ``counted`` false when only "more than the limit" is known (a bounded search)."""
    held = f"{count} {what}" if counted else f"more than {limit} {what}"
    return ServiceError(
        ErrorCode.TOO_MANY_INSTANCES,
        f"The request holds {held}; at most {limit} are classified in one request "
        "(BT_GATEWAY_DICOMWEB_MAX_INSTANCES): ask for one series, or send fewer instances.",
        {"instances": count, "max_instances": limit} if counted else {"max_instances": limit},
    )
