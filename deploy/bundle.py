"""The pretrained bundle: champion ONNX files shipped in the repository, and the manifest that says what they are.

A bundle is one folder (``shared/pretrained_bundle/`` by default) holding ``manifest.json`` and one ONNX file per model
and one for the guard against non-MRI input (the ensemble has no file: its weights are in the manifest).
The manifest records, per model, its registered name, file, sha256 and size, its metrics on the test split, its
parameters and the tags to register it with; and for the whole bundle the data fingerprint, the commit and the
exact command that produced it, and how it was evaluated ("evaluated on split X, refit on all N images").

Loading verifies every file against the manifest before anything is registered: a changed or truncated file is
refused with a message naming it, so a registry never serves bytes the manifest does not describe.
Pure: no MLflow here (``deploy/pretrained.py`` registers and builds bundles).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from shared.core.conformal import ConformalSets

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "shared" / "pretrained_bundle"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


class BundleError(ValueError):
    """The bundle is missing, its manifest unreadable, or a file differs from what the manifest says."""


class BundledModel(BaseModel):
    """One model of the bundle: what to register, and what the file must hash to."""

    model: str = Field(description="Short name served by inference (rf, snn, cnn, mobilenetv2).")
    registered_name: str = Field(description="Registered model name in MLflow (brain-tumor-<model>).")
    file: str = Field(description="ONNX file name inside the bundle folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    test_metrics: dict[str, float] = Field(description="Metrics on the test split of the evaluation run.")
    params: dict[str, Any] = Field(default_factory=dict, description="Training parameters of the recipe.")
    tags: dict[str, str] = Field(default_factory=dict, description="Model-version tags to register it with.")
    source_version: str | None = Field(None, description="The version in the registry the bundle was built from.")


class BundledEnsemble(BaseModel):
    """The ensemble of the bundle's models: no file of its own, only its members' weights and its prediction sets'
    thresholds (shared.core.conformal)."""

    registered_name: str
    weights: dict[str, float] = Field(description="Short name of each member -> its weight.")
    test_metrics: dict[str, float] = Field(default_factory=dict)
    conformal: ConformalSets | None = Field(None, description="Absent in bundles made before prediction sets.")
    temperature: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="The ensemble's own temperature on the weighted mean (1 in bundles made before it).",
    )
    command: str | None = Field(None, description="How this ensemble was built, when apart from the models' runs.")


class BundledGuard(BaseModel):
    """The guard against non-MRI input (docs/ood-guard.md): one ONNX file, its threshold inside its metadata."""

    registered_name: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    source_version: str | None = None
    command: str | None = Field(None, description="How this guard was fitted, when apart from the models' runs.")


class DataProvenance(BaseModel):
    """What the models were trained on and how they were evaluated."""

    description: str = Field(description="Human name of the data, e.g. 'brain-tumor-mri Training (5,708 images)'.")
    fingerprint: str = Field(description="sha256 over the data's file list and bytes (or the test split's files).")
    images: int = Field(ge=0, description="Images the bundled models were fitted on.")
    evaluation: str = Field(
        description="e.g. 'evaluated on a 20% duplicate-aware test split (seed 42), refit on all "
        "5,708 images with the same parameters'."
    )


class Manifest(BaseModel):
    """``manifest.json`` of a bundle."""

    format: int = MANIFEST_FORMAT
    created_at: str
    commit: str = Field(description="Git commit of the code that trained the models.")
    command: str = Field(description="The exact command that produced the run the bundle was built from.")
    data: DataProvenance
    models: list[BundledModel]
    ensemble: BundledEnsemble | None = None
    guard: BundledGuard | None = None

    def label(self) -> str:
        """The short "pretrained on ..." text shown beside each bundled model."""
        return f"{self.data.description}; {self.data.evaluation}"

    def files(self) -> list[BundledModel | BundledGuard]:
        """Every file of the bundle: the models', then the guard's."""
        return [*self.models, *([self.guard] if self.guard else [])]

    def total_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.files())


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest(folder: Path = BUNDLE_DIR) -> Manifest:
    """Read and validate ``folder/manifest.json``; BundleError when absent or malformed."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"no pretrained bundle at {folder} ({MANIFEST_FILE} is missing)")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}") from exc
    if manifest.format != MANIFEST_FORMAT:
        raise BundleError(f"{path} has manifest format {manifest.format}; this code reads format {MANIFEST_FORMAT}")
    return manifest


GUARD_KEY = "guard"


def _key(entry: BundledModel | BundledGuard) -> str:
    return entry.model if isinstance(entry, BundledModel) else GUARD_KEY


def verified_files(folder: Path, manifest: Manifest) -> dict[str, bytes]:
    """Every file's bytes, keyed by model short name (the guard's by ``guard``), after checking size and sha256
    against the manifest."""
    files: dict[str, bytes] = {}
    for entry in manifest.files():
        path = folder / entry.file
        if not path.is_file() or path.resolve().parent != folder.resolve():
            raise BundleError(f"bundle file {entry.file} for {_key(entry)} is missing from {folder}")
        data = path.read_bytes()
        digest = file_sha256(data)
        if len(data) != entry.size_bytes or digest != entry.sha256:
            raise BundleError(
                f"bundle file {path} differs from the manifest (sha256 {digest[:12]}..., {len(data)} bytes; "
                f"expected {entry.sha256[:12]}..., {entry.size_bytes} bytes): refusing to register it. "
                "Restore it from git or rebuild the bundle with `python -m deploy.pretrained build`."
            )
        files[_key(entry)] = data
    return files


def load_bundle(folder: Path = BUNDLE_DIR) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and the verified bytes of every model."""
    manifest = load_manifest(folder)
    return manifest, verified_files(folder, manifest)


def write_bundle(folder: Path, manifest: Manifest, files: dict[str, bytes]) -> Manifest:
    """Write the files and the manifest (sha256 and size filled from the bytes); returns the written manifest."""
    folder.mkdir(parents=True, exist_ok=True)

    def written_entry(entry: BundledModel | BundledGuard) -> Any:
        data = files[_key(entry)]
        (folder / entry.file).write_bytes(data)
        return entry.model_copy(update={"sha256": file_sha256(data), "size_bytes": len(data)})

    models = [written_entry(model) for model in manifest.models]
    guard = written_entry(manifest.guard) if manifest.guard else None
    written = manifest.model_copy(update={"models": models, "guard": guard})
    (folder / MANIFEST_FILE).write_text(written.model_dump_json(indent=2) + "\n")
    return written
