"""The bundle format: the manifest's fields, checksums verified on load, and the repository's allow-list."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploy.bundle import (
    BUNDLE_DIR,
    MANIFEST_FILE,
    BundledModel,
    BundleError,
    DataProvenance,
    Manifest,
    load_bundle,
    load_manifest,
    write_bundle,
)
from shared.core.contract import PreprocessingContract

ROOT = Path(__file__).resolve().parents[2]


def _manifest(models: list[str]) -> Manifest:
    return Manifest(
        created_at="2026-12-02T00:00:00+00:00",
        commit="abc123",
        command="python -m services.training.cli --data X --search quick",
        data=DataProvenance(
            description="sample (120 images)",
            fingerprint="f" * 64,
            images=120,
            evaluation="evaluated on a 20% test split, refit on all 120 images",
        ),
        models=[
            BundledModel(
                model=m,
                registered_name=f"brain-tumor-{m}",
                file=f"{m}.onnx",
                sha256="0" * 64,
                size_bytes=1,
                test_metrics={"test_accuracy": 0.9},
                params={"C": 1.0},
            )
            for m in models
        ],
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, make_onnx: Callable[..., tuple[bytes, Any]]) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    data, _ = make_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=16))
    write_bundle(folder, _manifest(["rf", "snn"]), {"rf": data, "snn": data + b""})
    return folder


def test_written_bundle_loads_with_every_manifest_field(bundle: Path) -> None:
    manifest, files = load_bundle(bundle)
    assert set(files) == {"rf", "snn"}
    for model in manifest.models:
        assert len(model.sha256) == 64 and model.size_bytes == len(files[model.model])
        assert model.test_metrics and model.params and model.registered_name == f"brain-tumor-{model.model}"
    assert manifest.commit and manifest.command and manifest.data.fingerprint
    assert "refit on all 120 images" in manifest.label()


def test_a_changed_file_is_refused_naming_it(bundle: Path, tmp_path: Path) -> None:
    for path in bundle.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    tampered = bytearray((tmp_path / "snn.onnx").read_bytes())
    tampered[-1] ^= 0xFF
    (tmp_path / "snn.onnx").write_bytes(bytes(tampered))
    with pytest.raises(BundleError, match=r"snn\.onnx differs from the manifest"):
        load_bundle(tmp_path)
    (tmp_path / "snn.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(tmp_path)


def test_missing_or_malformed_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="missing"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text('{"format": 1}')
    with pytest.raises(BundleError, match="not a valid bundle manifest"):
        load_manifest(tmp_path)


def test_the_repository_allows_the_bundle_folder_and_tracks_its_onnx_files() -> None:
    folder = BUNDLE_DIR.relative_to(ROOT).as_posix()
    allowed = [line.strip().rstrip("/") for line in (ROOT / ".artifacts-allow").read_text().splitlines()]
    assert folder in allowed
    # Not ignored by .gitignore's *.onnx rule: the bundle's files can be committed.
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/rf.onnx"], cwd=ROOT, check=False)
    assert ignored.returncode == 1
    assert subprocess.run(["git", "check-ignore", "-q", "elsewhere/rf.onnx"], cwd=ROOT, check=False).returncode == 0
