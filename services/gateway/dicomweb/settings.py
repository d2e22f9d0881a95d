"""The DICOMweb server the gateway pulls studies from and stores reports to (``BT_GATEWAY_DICOMWEB_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from shared.kit.upstream import ServiceUrl


class DicomWebSettings(BaseSettings):
    """Mixed into the gateway's Settings: no URL means the study routes answer 503 DICOMWEB_NOT_CONFIGURED, so the
    rest of the API (README command 1) never needs a PACS."""

    dicomweb_url: ServiceUrl | None = Field(
        None,
        description="Base URL of the DICOMweb server (QIDO-RS, WADO-RS, STOW-RS), e.g. Orthanc's "
        "http://127.0.0.1:8042/dicom-web. Unset: the study routes answer 503 DICOMWEB_NOT_CONFIGURED.",
    )
    dicomweb_username: str | None = Field(None, description="HTTP basic-auth user of the DICOMweb server, if any.")
    dicomweb_password: SecretStr | None = Field(None, description="Its password (never logged).")
    dicomweb_store_reports: bool = Field(
        True, description="Store each Structured Report back to the DICOMweb server with STOW-RS."
    )
    dicomweb_max_instances: int = Field(
        64,
        ge=1,
        le=1000,
        description="Most instances one study request classifies (pulled, or pushed in one body), and most slices "
        "(each frame of a multi-frame instance is one); more is 413 TOO_MANY_INSTANCES.",
    )
    dicomweb_max_push_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Largest pushed body (POST /v1/studies), read into memory as it arrives; each of its files is "
        "also within max_upload_bytes. Larger is 413 FILE_TOO_LARGE.",
    )
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="Longest wait for one DICOMweb request.")
    dicomweb_concurrency: int = Field(
        4, ge=1, le=64, description="Slices fetched or classified at once for one study request."
    )
