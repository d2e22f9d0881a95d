"""The ensemble model: a registered version of ``brain-tumor-ensemble`` names member versions and weights
(version tags written by training); it answers the weighted mean of the members' (calibrated) probabilities.

It has no ONNX graph of its own: the members take different image sizes and scalings, so it reuses their
loaded classifiers (the same onnxruntime sessions as ``model=<member>``) and looks like one classifier to the
routes. Its input tensor, from ``preprocess``, is the members' own tensors side by side (one decode, each
member's own resize), so its answer is exactly the weighted mean of what each member answers for the file.
Callers that hold pixels (predict-pixels, the explainer, the Open Inference Protocol's tensors) send one
image at the largest member size, which is resized to each member's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from PIL import Image

from shared.contract import PreprocessingContract
from shared.errors import ErrorCode, ServiceError
from shared.imaging import decode_grayscale, resize_gray, to_model_input
from shared.onnx_classifier import OnnxClassifier
from shared.schemas import ENSEMBLE_MEMBERS_TAG, ENSEMBLE_WEIGHTS_TAG

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleSpec:
    """Member model -> pinned version, and member model -> weight (summing to 1)."""

    members: dict[str, str]
    weights: dict[str, float]

    @classmethod
    def from_tags(cls, tags: dict[str, str], label: str) -> EnsembleSpec:
        try:
            members = {str(k): str(v) for k, v in json.loads(tags[ENSEMBLE_MEMBERS_TAG]).items()}
            weights = {str(k): float(v) for k, v in json.loads(tags[ENSEMBLE_WEIGHTS_TAG]).items()}
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ServiceError(
                ErrorCode.INVALID_MODEL,
                f"Model {label} cannot be served: its version has no valid {ENSEMBLE_MEMBERS_TAG!r} and "
                f"{ENSEMBLE_WEIGHTS_TAG!r} tags.",
            ) from exc
        if not members or set(members) != set(weights) or sum(weights.values()) <= 0:
            raise ServiceError(
                ErrorCode.INVALID_MODEL, f"Model {label} cannot be served: its members and weights do not match."
            )
        total = sum(weights.values())
        return cls(members, {name: weight / total for name, weight in weights.items()})


def _spec_cache(cache_dir: Path, registered_name: str, version: str, run_id: str | None) -> Path:
    digest = hashlib.sha256(f"{registered_name}|{version}|{run_id}".encode()).hexdigest()[:12]
    return cache_dir / "ensembles" / f"{version}-{digest}.json"


def read_spec(
    client: MlflowClient, guard: Callable[[str], AbstractContextManager[None]], cache_dir: Path, registered_name: str,
    version: str,
    run_id: str | None,
) -> EnsembleSpec:  # fmt: skip
    """The version's spec: from the cache folder when read before (a version's tags are written once, at
    registration), else from MLflow (``guard`` turns its failures into REGISTRY_UNAVAILABLE) and kept."""
    label = f"ensemble/{version}"
    path = _spec_cache(cache_dir, registered_name, version, run_id)
    if path.is_file():
        try:
            return EnsembleSpec.from_tags(json.loads(path.read_text()), label)
        except (ValueError, ServiceError):
            logger.warning("ignoring an unreadable cached ensemble spec %s", path)
    with guard(f"reading the members of ensemble version {version}"):
        tags = dict(client.get_model_version(registered_name, version).tags or {})
    spec = EnsembleSpec.from_tags(tags, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: tags[key] for key in (ENSEMBLE_MEMBERS_TAG, ENSEMBLE_WEIGHTS_TAG)}))
    return spec


class EnsembleClassifier:
    """Duck-types ``OnnxClassifier`` for the routes: preprocess, predict, predict_pixels, postprocess."""

    def __init__(self, name: str, version: str, members: list[tuple[OnnxClassifier, float]]) -> None:
        self.name, self.version, self.members = name, str(version), members
        self.ready = True
        self.on_run = None
        sizes = {member.contract.image_size for member, _ in members}
        class_names = {member.contract.class_names for member, _ in members}
        if len(class_names) != 1:
            raise ServiceError(ErrorCode.INVALID_MODEL, f"Model {self.key}: its members disagree on the classes.")
        # What pixel callers send: one raw image at the largest member size, resized for each member.
        self._contract = PreprocessingContract(
            image_size=max(sizes), scaling="raw", layout="nhwc", class_names=class_names.pop()
        )
        self._widths = [int(np.prod(member.contract.input_shape(1)[1:])) for member, _ in members]

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def contract(self) -> PreprocessingContract:
        return self._contract

    @property
    def member_versions(self) -> dict[str, str]:
        return {member.name: member.version for member, _ in self.members}

    @property
    def member_sizes(self) -> set[int]:
        return {member.contract.image_size for member, _ in self.members}

    def tensor_from_pixels(self, pixels: dict[int, np.ndarray]) -> np.ndarray:
        """One image already resized to every member size (size -> uint8 (size, size)) to the ensemble's
        tensor: each member's own tensor, flattened, side by side (1, sum of member input widths)."""
        parts = [
            to_model_input(pixels[member.contract.image_size], member.contract).reshape(1, -1)
            for member, _ in self.members
        ]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def preprocess(self, data: bytes, frame: int | None = None) -> np.ndarray:
        """One decode, then each member's own resize and tensor, as ``tensor_from_pixels``."""
        return self.tensor_from_image(decode_grayscale(data, frame))

    def tensor_from_image(self, gray: Image.Image) -> np.ndarray:
        """A decoded grayscale image to each member's own resize and tensor, as ``tensor_from_pixels``."""
        return self.tensor_from_pixels({size: resize_gray(gray, size) for size in self.member_sizes})

    def _combine(self, member_probabilities: list[np.ndarray]) -> np.ndarray:
        weights = [weight for _, weight in self.members]
        combined = sum(w * p.astype(np.float64) for w, p in zip(weights, member_probabilities, strict=True))
        return np.asarray(combined, dtype=np.float32)

    def predict(self, tensor: np.ndarray, max_batch: int | None = None) -> np.ndarray:
        """Members' tensors side by side (from ``preprocess``), or raw pixels at the contract size, to the
        weighted mean of the members' probabilities (N, classes)."""
        if tensor.shape[1:] == self._contract.input_shape()[1:]:
            return self.predict_pixels(tensor[..., 0], max_batch)
        if tensor.ndim != 2 or tensor.shape[1] != sum(self._widths):
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"Model {self.key} takes images of {self._contract.image_size}x{self._contract.image_size}.",
            )
        outputs, start = [], 0
        for (member, _), width in zip(self.members, self._widths, strict=True):
            part = tensor[:, start : start + width].reshape(member.contract.input_shape(len(tensor)))
            outputs.append(member.predict(np.ascontiguousarray(part), max_batch))
            start += width
        return self._combine(outputs)

    def predict_pixels(self, pixels: np.ndarray, max_batch: int | None = None) -> np.ndarray:
        """uint8 images at the contract size, resized for each member, to the weighted mean of their answers."""
        array = np.clip(np.rint(np.asarray(pixels)), 0, 255).astype(np.uint8)
        if array.ndim == 2:
            array = array[np.newaxis]
        outputs = []
        for member, _ in self.members:
            size = member.contract.image_size
            resized = (
                np.stack([resize_gray(Image.fromarray(image), size) for image in array])
                if len(array)
                else (np.empty((0, size, size), np.uint8))
            )
            outputs.append(member.predict_pixels(resized, max_batch))
        return self._combine(outputs)

    def postprocess(self, probabilities: np.ndarray) -> tuple[str, dict[str, float]]:
        row = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        names = self._contract.class_names
        return names[int(np.argmax(row))], {name: float(p) for name, p in zip(names, row, strict=True)}


def load_ensemble(
    name: str, version: str, spec: EnsembleSpec, get_member: Callable[[str, str], OnnxClassifier]
) -> EnsembleClassifier:
    """The ensemble of the pinned member versions, each loaded (or reused) through ``get_member``."""
    members = [(get_member(member, pinned), spec.weights[member]) for member, pinned in spec.members.items()]
    return EnsembleClassifier(name, version, members)
