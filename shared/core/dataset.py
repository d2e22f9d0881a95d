"""Finding labelled images on disk and turning them into cached arrays.

Accepted layouts:
- ``ROOT/<class>/*.jpg|png|...``
- the Kaggle layout ``ROOT/Training/<class>`` (and optionally ``ROOT/Testing/<class>``).
Class folder names are matched case-insensitively to ``CLASS_NAMES``; file names are never used.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.core.contract import CLASS_NAMES
from shared.core.imaging import decode_to_array
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
SAMPLE_DATA_DIR = Path(__file__).resolve().parents[1] / "sample_data"


@dataclass(frozen=True)
class LabelledFiles:
    """Image paths with their class indices (into CLASS_NAMES)."""

    paths: tuple[Path, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}

    def fingerprint(self) -> str:
        """Content hash: changes when any file is added, removed, relabelled or rewritten, not when touched."""
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels, strict=True):
            digest.update(f"{label}|{path.name}|".encode())
            try:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            except OSError as exc:
                raise _unusable(path, type(exc).__name__) from exc
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetLayout:
    """Where the training images are and, when the folder has its own, the test images."""

    root: Path
    train: LabelledFiles
    test: LabelledFiles | None = None
    notes: list[str] = field(default_factory=list)


def _class_dirs(folder: Path) -> dict[str, Path]:
    by_name = {child.name.lower(): child for child in folder.iterdir() if child.is_dir()}
    return {name: by_name[name] for name in CLASS_NAMES if name in by_name}


def _list_images(class_dirs: dict[str, Path]) -> LabelledFiles:
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(CLASS_NAMES):
        folder = class_dirs.get(name)
        if folder is None:
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([index] * len(files))
    return LabelledFiles(tuple(paths), np.asarray(labels, dtype=np.int64))


def _unusable(path: Path, reason: str) -> ServiceError:
    return ServiceError(ErrorCode.INVALID_DATA_FOLDER, f"Image {str(path)!r} cannot be used: {reason}")


def discover(root: str | Path) -> DatasetLayout:
    """Find the images under root, or raise INVALID_DATA_FOLDER saying what was expected."""
    try:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise ServiceError(ErrorCode.INVALID_DATA_FOLDER, f"Data folder {str(folder)!r} does not exist.")
        top = {child.name.lower(): child for child in folder.iterdir() if child.is_dir()}
        if "training" in top:
            train = _list_images(_class_dirs(top["training"]))
            test = _list_images(_class_dirs(top["testing"])) if "testing" in top else None
        else:
            train, test = _list_images(_class_dirs(folder)), None
    except (RuntimeError, OSError) as exc:  # an unknown ~user, a folder (or sub-folder) this process may not read
        raise ServiceError(ErrorCode.INVALID_DATA_FOLDER, f"Data folder {str(root)!r} cannot be read.") from exc
    if test is not None and len(test) == 0:
        test = None
    if len(train) == 0:
        raise ServiceError(
            ErrorCode.INVALID_DATA_FOLDER,
            f"Data folder {str(folder)!r} holds no class folders with images; expected "
            f"<root>/<class>/*.jpg or <root>/Training/<class>/*.jpg with classes {', '.join(CLASS_NAMES)}.",
        )
    present = [name for name, count in train.counts().items() if count > 0]
    if len(present) < 2:
        raise ServiceError(
            ErrorCode.INVALID_DATA_FOLDER,
            f"Data folder {str(folder)!r} has images for {present} only; at least two classes are needed.",
        )
    return DatasetLayout(root=folder, train=train, test=test)


def load_arrays(files: LabelledFiles, image_size: int, cache_dir: Path | None = None) -> np.ndarray:
    """Decode and resize every image once; cached on disk by data fingerprint and size."""
    cache_file = None
    if cache_dir is not None:
        key = f"{files.fingerprint()}-{image_size}px-gray-v1"
        cache_file = Path(cache_dir) / f"images-{key}.npy"
        if cache_file.exists():
            logger.info("image cache hit: %s", cache_file)
            return np.load(cache_file)
    images = np.empty((len(files), image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(files.paths):
        try:
            images[i] = decode_to_array(path.read_bytes(), image_size)
        except (ServiceError, OSError) as exc:  # one bad file stops the run: say which, and why
            raise _unusable(path, exc.message if isinstance(exc, ServiceError) else type(exc).__name__) from exc
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, images)
        tmp.replace(cache_file)
    return images
