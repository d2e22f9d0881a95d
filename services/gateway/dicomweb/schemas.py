"""The JSON answer of the study routes: one entry per slice, the skipped instances, a summary, the reports.

UIDs only: no patient name, ID, birth date or any other value of the source datasets is ever in it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.kit.schemas import ItemError, OodOut


class SliceOut(BaseModel):
    """One classified slice: an instance, or one frame of a multi-frame instance."""

    sop_instance_uid: str
    series_instance_uid: str
    frame: int | None = Field(None, description="0-based frame of a multi-frame instance; null for one frame.")
    label: str
    probabilities: dict[str, float]
    ood: OodOut | None = Field(None, description="The guard's verdict, as /v1/predict answers it.")
    prediction_set: list[str] | None = None
    referral: bool = False
    referral_reason: str | None = None


class SkippedOut(BaseModel):
    """An instance (or frame) not classified, and why: never guessed at."""

    sop_instance_uid: str
    series_instance_uid: str
    frame: int | None = None
    reason: str = Field(description="NOT_MR (another modality), or the error code inference answered, e.g. "
                        "NOT_A_BRAIN_MRI (refused by the guard) or UNSUPPORTED_DICOM.")  # fmt: skip
    error: ItemError | None = Field(None, description="Inference's error for this slice, when it refused it.")
    modality: str | None = Field(None, description="The instance's modality, for NOT_MR.")


class SummaryOut(BaseModel):
    label: str | None = Field(
        description="The label of the most confident tumour finding (glioma, meningioma or pituitary) over the "
        "classified slices; notumor when no slice shows a tumour; null when no slice was classified."
    )
    probability: float | None = Field(None, description="That finding's probability (the highest of its label).")
    sop_instance_uid: str | None = Field(None, description="The slice of that finding.")
    slices_per_label: dict[str, int] = Field(description="How many classified slices got each label.")
    classified: int
    skipped: int
    referred: int = Field(description="Classified slices a radiologist should check (referral true).")


class ReportOut(BaseModel):
    """The Structured Report made for one classified series."""

    source_series_instance_uid: str
    sop_instance_uid: str = Field(description="The report's own SOP Instance UID (GET /v1/reports/{it}).")
    series_instance_uid: str = Field(description="The report's own series.")
    stored: bool = Field(description="True when the DICOMweb server accepted it (STOW-RS).")


class StudyClassificationOut(BaseModel):
    study_instance_uid: str
    model: str
    version: str | None = Field(description="The registered version that answered (null: no slice classified).")
    slices: list[SliceOut]
    skipped: list[SkippedOut]
    summary: SummaryOut
    reports: list[ReportOut] = Field(description="One Comprehensive 3D SR (TID 1500) per classified series.")
    timings_ms: dict[str, float] = Field(description="Where the time went: fetch, classify, report, store.")
    fhir: dict | None = Field(
        None,
        description="With fhir=true: the same result as a FHIR R5 Bundle (a preliminary DiagnosticReport and one "
        "Observation per slice), for an EHR; no patient data, linked by the study's UID.",
    )
