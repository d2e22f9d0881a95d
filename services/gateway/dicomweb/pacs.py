"""The DICOMweb server: QIDO-RS to find instances, WADO-RS to fetch them, STOW-RS to store reports.

dicomweb-client (requests) blocks, so every call runs in a worker thread. Its failures become the gateway's own
errors here, once: unreachable or too slow is 503, an answer that makes no sense or a refusal is 502, nothing found
is 404. Messages name the server's role and the HTTP status, never a UID or any value of a dataset.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from services.gateway.dicomweb.settings import DicomWebSettings
from shared.kit.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What QIDO-RS is asked for each instance: enough to choose what to fetch and to skip the rest with a reason.
INSTANCE_FIELDS = ("Modality", "SOPClassUID", "SeriesInstanceUID", "NumberOfFrames", "InstanceNumber")


def not_configured() -> ServiceError:
    return ServiceError(
        ErrorCode.DICOMWEB_NOT_CONFIGURED,
        "No DICOMweb server is configured: set BT_GATEWAY_DICOMWEB_URL (e.g. Orthanc's http://host:8042/dicom-web) "
        "to pull studies and store reports.",
    )


def part10_bytes(dataset: Dataset) -> bytes:
    """A dataset as the DICOM Part 10 file inference decodes (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class PacsClient:
    """One DICOMweb server; every method is a coroutine that runs the blocking client in a thread."""

    def __init__(self, settings: DicomWebSettings) -> None:
        if settings.dicomweb_url is None:
            raise not_configured()
        # Imported here: dicomweb-client, requests and pydicom cost the gateway's start-up a third of a second, and
        # README command 1 needs no PACS.
        import requests
        from dicomweb_client import DICOMwebClient

        session = requests.Session()
        # The PACS is named in settings; proxies from the environment are not the gateway's to use for it.
        session.trust_env = False
        if settings.dicomweb_username:
            password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
            session.auth = (settings.dicomweb_username, password)
        self.client = DICOMwebClient(settings.dicomweb_url, session=session, timeout=settings.dicomweb_timeout_s)
        # One try each: the caller is waiting, and a study request already bounds its own time.
        self.client.set_http_retry_params(retry=False)

    async def find_instances(self, study_uid: str, series_uid: str | None, limit: int) -> list[Dataset]:
        """QIDO-RS: at most ``limit`` instances of a study (or of one of its series), as datasets of the fields
        asked for. The limit is sent, so that a server's own default page size never truncates a study silently:
        the caller asks for one more than it takes, and more than it takes is refused."""
        found = await self._run(
            "search",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, fields=list(INSTANCE_FIELDS), limit=limit
            ),
        )
        from pydicom.dataset import Dataset

        return [Dataset.from_json(item) for item in found]

    async def find_instance(self, sop_uid: str) -> Dataset | None:
        """QIDO-RS over every study: the one instance with this SOP Instance UID, or None."""
        found = await self._run(
            "search",
            lambda: self.client.search_for_instances(
                search_filters={"SOPInstanceUID": sop_uid},
                fields=["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"],
            ),
        )
        from pydicom.dataset import Dataset

        return Dataset.from_json(found[0]) if found else None

    async def fetch(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """WADO-RS: one whole instance."""
        return await self._run("retrieve", lambda: self.client.retrieve_instance(study_uid, series_uid, sop_uid))

    async def store(self, datasets: list[Dataset]) -> None:
        """STOW-RS: store instances (the reports); a refusal of any of them is an error."""
        answer = await self._run("store", lambda: self.client.store_instances(datasets))
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR, f"The DICOMweb server refused to store {len(failed)} of the reports."
            )

    async def _run(self, action: str, call: Callable[[], T]) -> T:
        import requests

        try:
            return await asyncio.to_thread(call)
        except requests.Timeout as exc:
            raise ServiceError(
                ErrorCode.UPSTREAM_TIMEOUT, f"The DICOMweb server did not answer a {action} request in time."
            ) from exc
        except requests.ConnectionError as exc:
            raise ServiceError(
                ErrorCode.UPSTREAM_UNAVAILABLE, f"The DICOMweb server cannot be reached ({action} request)."
            ) from exc
        except requests.HTTPError as exc:
            raise _http_error(action, exc.response) from exc
        except (ValueError, KeyError, TypeError) as exc:
            # A body the client cannot parse (not DICOM JSON, not multipart); its text may hold patient data.
            logger.warning("DICOMweb %s answer not understood (%s)", action, type(exc).__name__)
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR, f"The DICOMweb server's answer to a {action} request is not valid DICOMweb."
            ) from exc


def _http_error(action: str, response: Any) -> ServiceError:
    status = getattr(response, "status_code", 0)
    if status == 404:
        return ServiceError(ErrorCode.NOT_FOUND, f"The DICOMweb server has no such instance ({action}: 404).")
    if status in (401, 403):
        return ServiceError(
            ErrorCode.UPSTREAM_ERROR,
            f"The DICOMweb server refused the gateway's credentials ({status}); check BT_GATEWAY_DICOMWEB_USERNAME "
            "and BT_GATEWAY_DICOMWEB_PASSWORD.",
        )
    if status == 503:
        return ServiceError(ErrorCode.UPSTREAM_UNAVAILABLE, f"The DICOMweb server is unavailable ({action}: 503).")
    return ServiceError(ErrorCode.UPSTREAM_ERROR, f"The DICOMweb server answered a {action} request with {status}.")
