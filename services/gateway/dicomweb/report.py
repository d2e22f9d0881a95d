"""One Comprehensive 3D SR per classified series, on TID 1500 (Measurement Report), built with highdicom.

The IHE AI Results profile's shape: a measurement group (TID 1501) per slice holding its coded findings, the
probability of each class as a numeric measurement, the slice as source image, and the algorithm's identification;
the model as device observer; VerificationFlag UNVERIFIED; a series description that says it is not for
diagnostic use. Patient and study identifiers are copied from the source instances by highdicom, never made up:
only the report's own series and instance get new UIDs. docs/hospital.md explains every code.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from services.gateway.dicomweb.classify import NO_TUMOUR, Classified
from shared.kit.schemas import registered_name

MANUFACTURER = "brain-tumor-zoo"
SERIES_DESCRIPTION = "AI brain tumour classification - not for diagnostic use"
# Far from the modality's own series numbers; a viewer lists the report after the images.
SERIES_NUMBER = 9901

# The classes have no concept in pydicom's or highdicom's code dictionaries (SNOMED CT's glioma, meningioma and
# pituitary adenoma are not there): they are coded in a local scheme ("99" prefix: PS3.16 8.2), the exact class the
# model answers. The SNOMED CT concepts the dictionaries do have carry what is standard about each finding: a
# neoplasm present or absent, and where (finding site).
LOCAL_SCHEME = "99BTZOO"
CLASS_CODES = {
    "glioma": Code("glioma", LOCAL_SCHEME, "Glioma"),
    "meningioma": Code("meningioma", LOCAL_SCHEME, "Meningioma"),
    "notumor": Code("notumor", LOCAL_SCHEME, "No tumour"),
    "pituitary": Code("pituitary", LOCAL_SCHEME, "Pituitary tumour"),
}
FINDING_SITES = {
    "glioma": codes.SCT.Brain,
    "meningioma": codes.SCT.MeningesStructure,
    "notumor": codes.SCT.Brain,
    "pituitary": codes.SCT.PituitaryStructure,
}


def probability_code(label: str) -> Code:
    return Code(f"p-{label}", LOCAL_SCHEME, f"Probability of {CLASS_CODES[label].meaning.lower()}")


@dataclass(frozen=True)
class ModelIdentity:
    """Who made the findings: the served model's short name, version and registry URI."""

    model: str
    version: str

    @property
    def registered_name(self) -> str:
        return registered_name(self.model)

    @property
    def registry_uri(self) -> str:
        """MLflow's URI of the registered version."""
        return f"models:/{self.registered_name}/{self.version}"

    def algorithm(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.registered_name, version=self.version, parameters=[f"registry={self.registry_uri}"]
        )

    def observer(self) -> hd.sr.ObserverContext:
        # The same UID for the same model version in every report: a PACS can group the reports by device.
        uid = generate_uid(entropy_srcs=[MANUFACTURER, self.registered_name, self.version])
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid,
            name=self.registered_name,
            manufacturer_name=MANUFACTURER,
            model_name=self.registered_name,
            serial_number=self.version,
            physical_location=self.registry_uri,
        )
        return hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)


@dataclass(frozen=True)
class BuiltReport:
    source_series_uid: str
    dataset: hd.sr.Comprehensive3DSR

    @property
    def sop_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)


def slice_group(item: Classified, identity: ModelIdentity, index: int) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one slice: finding, probabilities, the slice, the algorithm."""
    label = item.prediction.label
    algorithm = identity.algorithm()
    tumour = label != NO_TUMOUR
    evaluations = [
        # Not named "Finding" (DCM 121071): TID 1501 holds that concept once, as the finding type.
        hd.sr.QualitativeEvaluation(codes.SCT.Classification, CLASS_CODES[label]),
        hd.sr.QualitativeEvaluation(codes.SCT.Neoplasm, codes.SCT.Present if tumour else codes.SCT.Absent),
    ]
    measurements = [
        # The group's algorithm identification covers its measurements: not repeated on each (a third of the size).
        hd.sr.Measurement(name=probability_code(name), value=float(value), unit=codes.UCUM.NoUnits)
        for name, value in item.prediction.probabilities.items()
        if name in CLASS_CODES
    ]
    source = _source_image(item)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"slice {index + 1}"),
        finding_type=codes.SCT.Neoplasm,
        finding_sites=[hd.sr.FindingSite(FINDING_SITES[label])],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[source],
    )


def _source_image(item: Classified) -> hd.sr.SourceImageForMeasurementGroup:
    """The slice: its frame (1-based) when its IOD has frames (Enhanced MR); a multi-frame instance of a single-frame
    IOD (legacy MR written with NumberOfFrames, seen in the wild) is referenced whole, as the standard allows no
    frame numbers there."""
    dataset = item.instance.dataset
    if item.frame is not None:
        try:
            return hd.sr.SourceImageForMeasurementGroup.from_source_image(dataset, [item.frame + 1])
        except TypeError:
            pass
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(dataset)


def build_report(series: list[Classified], identity: ModelIdentity) -> BuiltReport:
    """The Comprehensive 3D SR of one series' classified slices (all of one series, in order)."""
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=identity.observer()),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[slice_group(item, identity, index) for index, item in enumerate(series)],
    )
    evidence = [_evidence(dataset) for dataset in _unique([item.instance.dataset for item in series])]
    dataset = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
    )
    dataset.CodingSchemeIdentificationSequence = [_local_scheme()]
    return BuiltReport(series[0].instance.series_uid, dataset)


def _local_scheme() -> Dataset:
    """The local scheme declared in the document (PS3.3 C.12.1.1.2's Coding Scheme Identification)."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "brain-tumor-zoo classes and class probabilities"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def build_reports(classified: list[Classified], identity: ModelIdentity) -> list[BuiltReport]:
    """One report per series that has classified slices, in the order the series first appear."""
    by_series: dict[str, list[Classified]] = {}
    for item in classified:
        by_series.setdefault(item.instance.series_uid, []).append(item)
    return [build_report(items, identity) for items in by_series.values()]


# Type 2 attributes highdicom copies from the first source: a source without one gets it empty (DICOM's "unknown"),
# never a made-up value.
COPIED_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def _evidence(dataset: Dataset) -> Dataset:
    """The source's header (no pixels) with its missing type 2 attributes present and empty."""
    header = Dataset()
    header.update({element.tag: element for element in dataset if element.keyword != "PixelData"})
    for keyword in COPIED_TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _unique(datasets: list[Dataset]) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for dataset in datasets:
        seen.setdefault(str(dataset.SOPInstanceUID), dataset)
    return list(seen.values())
