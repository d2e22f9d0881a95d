"""The guard against input that is not a brain MRI slice, as a servable (docs/ood-guard.md).

One ONNX graph (the upload's gray thumbnail, a few statistics and its colour thumbnail -> one score) with its
thresholds and input kind in its metadata, opened by the one session factory. Its input row is the thumbnail's
pixels, the statistics and the colour thumbnail's values side by side (``shared.core.guard_input``: defined once
for training and inference); its answer is the verdict. A DICOM file whose header declares another modality than
MR is flagged whatever its score (``postprocess``): a head CT on black is laid out as an MR slice is, and its
header says what it is.
Which version is the guard, and what a verdict does to a request, is ``guard_selector``'s and the data plane's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.core.dicom import MR_MODALITY, echoed_modality
from shared.core.guard_input import (
    COLOUR_SIZE,
    FEATURE_NAMES,
    GUARD_INPUT_KIND,
    THUMBNAIL_SIZE,
    decode_guard_images,
    guard_input_of,
)
from shared.core.imaging import DecodedImage
from shared.core.onnx_classifier import open_session
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import GUARD_METADATA_KEY, OodOut

logger = logging.getLogger(__name__)

GUARD_MODEL = "guard"
_PIXELS = THUMBNAIL_SIZE * THUMBNAIL_SIZE
_STATISTICS_END = _PIXELS + len(FEATURE_NAMES)
_COLOUR_SHAPE = (COLOUR_SIZE, COLOUR_SIZE, 3)


class Guard:
    """One guard version: ``ready`` once ``load()`` opened its session and accepted its metadata."""

    name = GUARD_MODEL

    def __init__(self, version: str, source: Path, intra_op_threads: int = 0) -> None:
        self.version = str(version)
        self.source = source
        self.intra_op_threads = intra_op_threads
        self.ready = False
        self.threshold = float("inf")
        self.flag_threshold = float("inf")
        self._feeds: tuple[str, str, str] = ("", "", "")
        self._session: ort.InferenceSession | None = None

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (_STATISTICS_END + int(np.prod(_COLOUR_SHAPE)),)

    def _invalid(self, problem: str) -> ServiceError:
        return ServiceError(ErrorCode.INVALID_MODEL, f"guard version {self.version} {problem}")

    def load(self) -> None:
        """Open the session; a guard fitted on another input kind (an older guard) is INVALID_MODEL: scored on
        the wrong input, its verdicts would be meaningless."""
        try:
            session = open_session(self.source, self.intra_op_threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise self._invalid("cannot be opened by onnxruntime") from exc
        raw = session.get_modelmeta().custom_metadata_map.get(GUARD_METADATA_KEY)
        if raw is None:
            raise self._invalid(f"has no {GUARD_METADATA_KEY} metadata")
        meta = json.loads(raw)
        kind = meta.get("input_kind", "gray32 pixels only (before input kinds)")
        if kind != GUARD_INPUT_KIND:
            raise self._invalid(
                f"was fitted on input {kind!r}, this service computes {GUARD_INPUT_KIND!r}: it is not used "
                "(retrain, or register a guard of this input kind)"
            )
        self.threshold = float(meta["threshold"])
        # Guards fitted before the "unusual" verdict have one threshold: nothing is unusual without being refused.
        self.flag_threshold = float(meta.get("flag_threshold", self.threshold))
        self._feeds = (str(meta["input_name"]), str(meta["features_input_name"]), str(meta["colour_input_name"]))
        self._session = session
        self.ready = True

    def preprocess(self, images: Sequence[DecodedImage]) -> np.ndarray:
        """Each upload's thumbnail pixels, statistics and colour thumbnail (0-255), side by side (N, pixels +
        statistics + 64 * 64 * 3), computed exactly as training computed the fitting images' (shared code) from the
        same decoding the models read."""
        decoded = [decode_guard_images(self._file_of(image), image.frame, image.gray) for image in images]
        inputs = guard_input_of(np.stack([d[0] for d in decoded]), np.stack([d[1] for d in decoded]))
        colours = inputs.colour_input().reshape(len(decoded), -1)
        return np.concatenate([inputs.pixels, inputs.features, colours], axis=1).astype(np.float32, copy=False)

    def _file_of(self, image: DecodedImage) -> bytes:
        # Its statistics read the file in colour: only uploads are judged, never pixels a caller holds.
        if image.data is None:
            raise ServiceError(ErrorCode.INVALID_REQUEST, f"Model {self.key} judges uploaded files, not pixels.")
        return image.data

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores (N, 1): higher is less like a brain MRI slice."""
        if self._session is None:
            raise ServiceError(ErrorCode.MODEL_NOT_READY, f"Model {self.key} is not loaded yet.")
        feeds = {
            self._feeds[0]: batch[:, :_PIXELS],
            self._feeds[1]: batch[:, _PIXELS:_STATISTICS_END],
            self._feeds[2]: batch[:, _STATISTICS_END:].reshape(len(batch), *_COLOUR_SHAPE),
        }
        return np.asarray(self._session.run(None, feeds)[0], dtype=np.float32).reshape(len(batch), -1)

    def postprocess(self, row: np.ndarray, image: DecodedImage | None = None) -> OodOut:
        """The verdict on one image from its score; ``image`` (what was scored) adds what its header declares."""
        score = float(np.asarray(row).reshape(-1)[0])
        modality = image.modality if image is not None else None
        other = echoed_modality(modality) if modality is not None and modality != MR_MODALITY else None
        return OodOut(score=round(score, 4), threshold=round(self.threshold, 4),
                      flag=score > self.threshold or other is not None, flag_threshold=round(self.flag_threshold, 4),
                      unusual=score > self.flag_threshold or other is not None, declared_modality=other,
                      guard_version=self.version)  # fmt: skip
