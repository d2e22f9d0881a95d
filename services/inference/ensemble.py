"""The ensemble model: a registered version of ``brain-tumor-ensemble`` names member versions and weights
(version tags written by training, ``shared.core.ensemble_spec``); it answers the weighted mean of the members'
(calibrated) probabilities, tempered by the ensemble's own temperature (1 for versions registered before it), with
prediction sets from its own conformal thresholds. A member weighing 0 (left out by training's rule) is not run.

It has no ONNX graph of its own: the members take different image sizes and scalings, so it reuses their
loaded classifiers (the same onnxruntime sessions as ``model=<member>``) and is one more servable
(``servable.Classifier``) to the data plane. Its input, from ``preprocess``, is the members' own tensors
flattened side by side (each member's own resize of the one decoding), so its answer is exactly the (tempered)
weighted mean of what each member answers for the file. Callers that hold a tensor (the Open Inference Protocol) send
raw pixels at the largest member size, resized to each member's size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from services.inference.servable import Classifier
from shared.core.conformal import ConformalSets
from shared.core.contract import PreprocessingContract
from shared.core.ensemble_spec import EnsembleSpec, SpecError, combine
from shared.core.imaging import DecodedImage
from shared.core.onnx_classifier import ClassScores
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)


def read_spec(path: Path, label: str) -> EnsembleSpec:
    """The spec in a version's verified spec file (the registered ``ensemble.json``); INVALID_MODEL when it does
    not describe a servable ensemble."""
    try:
        return EnsembleSpec.from_document(json.loads(path.read_text()))
    except (OSError, ValueError, SpecError) as exc:
        raise ServiceError(ErrorCode.INVALID_MODEL, f"Model {label} cannot be served: {exc}.") from exc


class Ensemble:
    """The weighted mean of pinned member classifiers' probabilities, served like one classifier."""

    def __init__(
        self, name: str, version: str, members: list[tuple[Classifier, float]], conformal: ConformalSets | None = None,
        temperature: float = 1.0,
    ) -> None:  # fmt: skip
        self.name, self.version, self.members = name, str(version), members
        self.conformal = conformal
        self.temperature = temperature  # the ensemble's own, on the members' weighted mean
        self.ready = False
        class_names = {member.contract.class_names for member, _ in members}
        if len(class_names) != 1:
            raise ServiceError(ErrorCode.INVALID_MODEL, f"Model {self.key}: its members disagree on the classes.")
        # What tensor callers send: one raw image at the largest member size, resized for each member.
        self._contract = PreprocessingContract(
            image_size=max(member.contract.image_size for member, _ in members),
            scaling="raw",
            layout="nhwc",
            class_names=class_names.pop(),
        )
        self._widths = [int(np.prod(member.input_shape)) for member, _ in members]

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def contract(self) -> PreprocessingContract:
        return self._contract

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (sum(self._widths),)

    def load(self) -> None:
        """Its members are loaded servables already (the registry loads them first)."""
        self.ready = all(member.ready for member, _ in self.members)

    def preprocess(self, images: Sequence[DecodedImage]) -> np.ndarray:
        """Each member's own tensor of the images, flattened, side by side (N, sum of member input widths)."""
        parts = [member.preprocess(images).reshape(len(images), -1) for member, _ in self.members]
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def preprocess_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """Raw pixels at the contract size, (N, size, size, 1) float32, resized for each member."""
        size = self._contract.image_size
        if tensor.dtype != np.float32 or tensor.shape[1:] != (size, size, 1) or len(tensor) == 0:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"Model {self.key} takes raw pixels as float32 (N, {size}, {size}, 1) with N >= 1; "
                f"got {tensor.dtype} {tuple(tensor.shape)}.",
            )
        pixels = np.clip(np.rint(tensor[..., 0]), 0, 255).astype(np.uint8)
        return self.preprocess([DecodedImage.from_pixels(image) for image in pixels])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The members' tensors side by side (from ``preprocess``) to the weighted mean of their probabilities,
        tempered by the ensemble's temperature."""
        outputs, start = [], 0
        for (member, _), width in zip(self.members, self._widths, strict=True):
            part = batch[:, start : start + width].reshape(len(batch), *member.input_shape)
            outputs.append(member.predict(np.ascontiguousarray(part)))
            start += width
        return combine(outputs, [weight for _, weight in self.members], self.temperature).astype(np.float32)

    def postprocess(self, row: np.ndarray) -> ClassScores:
        values = np.asarray(row, dtype=np.float64).reshape(-1)
        names = self._contract.class_names
        if len(values) != len(names):
            problem = f"Model {self.key}: {len(values)} scores for {len(names)} classes."
            raise ServiceError(ErrorCode.INVALID_MODEL, problem)
        members = {member.name: member.version for member, _ in self.members}
        probabilities = {name: float(p) for name, p in zip(names, values, strict=True)}
        return ClassScores(names[int(np.argmax(values))], probabilities, members)


def build_ensemble(
    name: str, version: str, spec: EnsembleSpec, get_member: Callable[[str, str], Classifier]
) -> Ensemble:
    """The ensemble of the pinned member versions, each loaded (or reused) through ``get_member``."""
    members = [(get_member(member, pinned), spec.weights[member]) for member, pinned in spec.running_members().items()]
    ensemble = Ensemble(name, version, members, spec.conformal, spec.temperature)
    ensemble.load()
    return ensemble
