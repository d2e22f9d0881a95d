"""Finding labelled images in both supported layouts, clear errors, and the decoded-image cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES
from shared.core.dataset import SAMPLE_DATA_DIR, discover, load_arrays
from shared.kit.errors import ErrorCode, ServiceError


def copy_sample(target: Path, per_class: int = 3, rename_upper: bool = False) -> None:
    for name in CLASS_NAMES:
        folder = target / (name.upper() if rename_upper else name)
        folder.mkdir(parents=True)
        for path in sorted((SAMPLE_DATA_DIR / name).glob("*.jpg"))[:per_class]:
            shutil.copy(path, folder / path.name)


def test_embedded_sample_has_every_class() -> None:
    layout = discover(SAMPLE_DATA_DIR)
    assert layout.test is None
    assert all(count >= 20 for count in layout.train.counts().values())


def test_flat_layout_with_case_insensitive_class_names(tmp_path: Path) -> None:
    copy_sample(tmp_path, rename_upper=True)
    (tmp_path / "README.txt").write_text("ignored")
    layout = discover(tmp_path)
    assert layout.train.counts() == dict.fromkeys(CLASS_NAMES, 3)


def test_kaggle_layout_uses_testing_as_test_set(tmp_path: Path) -> None:
    copy_sample(tmp_path / "Training", per_class=3)
    copy_sample(tmp_path / "Testing", per_class=2)
    layout = discover(tmp_path)
    assert len(layout.train) == 12 and layout.test is not None and len(layout.test) == 8


def test_labels_come_from_folders_not_file_names(tmp_path: Path) -> None:
    copy_sample(tmp_path, per_class=1)
    layout = discover(tmp_path)
    for path, label in zip(layout.train.paths, layout.train.labels, strict=True):
        assert path.parent.name == CLASS_NAMES[label]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as raised:
        discover(tmp_path / "nope")
    assert raised.value.code is ErrorCode.INVALID_DATA_FOLDER and "does not exist" in raised.value.message


def test_folder_without_class_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "glioma").mkdir()
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ServiceError) as raised:
        discover(tmp_path)
    assert "no class folders with images" in raised.value.message


def test_load_arrays_caches_and_notices_changes(tmp_path: Path) -> None:
    copy_sample(tmp_path / "data", per_class=2)
    cache = tmp_path / "cache"
    layout = discover(tmp_path / "data")
    before = layout.train.fingerprint()
    first = load_arrays(layout.train, 24, cache)
    assert first.shape == (8, 24, 24) and first.dtype == np.uint8
    assert len(list(cache.glob("*.npy"))) == 1
    np.testing.assert_array_equal(load_arrays(layout.train, 24, cache), first)
    victim = layout.train.paths[0]
    shutil.copy(layout.train.paths[-1], victim)  # content (size/mtime) changes -> new key
    changed = discover(tmp_path / "data")
    assert changed.train.fingerprint() != before
    load_arrays(changed.train, 24, cache)
    assert len(list(cache.glob("*.npy"))) == 2


def test_a_file_that_is_not_an_image_is_named_in_the_error(tmp_path: Path) -> None:
    copy_sample(tmp_path / "data", per_class=2)
    broken = tmp_path / "data" / "glioma" / "broken.jpg"
    broken.write_bytes(b"not a JPEG at all")
    with pytest.raises(ServiceError) as raised:
        load_arrays(discover(tmp_path / "data").train, 24, tmp_path / "cache")
    assert raised.value.code is ErrorCode.INVALID_DATA_FOLDER and "broken.jpg" in raised.value.message
