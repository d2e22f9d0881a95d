"""The guard against input that is not a brain MRI slice, as inference runs it (docs/ood-guard.md).

The guard is the ``champion`` of ``brain-tumor-guard`` in MLflow: a small ONNX graph (thumbnail -> score) with
its threshold and thumbnail size in its metadata, downloaded and checked against its sha256 like every model,
run with onnxruntime. Modes (``BT_INFERENCE_OOD_MODE``): ``refuse`` answers 422 NOT_A_BRAIN_MRI above the
threshold, ``flag`` answers with ``ood.flag`` true, ``off`` skips the guard (``ood`` null). Without a registered
guard (or while MLflow has never answered) answers carry ``ood: null`` and nothing is refused: the guard fails
open, the classifiers still answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from PIL import Image

from services.inference.catalog import ModelRecord
from services.inference.mlflow_store import MlflowStore
from shared.errors import ErrorCode, ServiceError
from shared.guard_input import GUARD_INPUT_KIND, guard_input
from shared.schemas import GUARD_METADATA_KEY, GUARD_REGISTERED_NAME, OodOut

logger = logging.getLogger(__name__)

OOD_MODES = ("refuse", "flag", "off")
# The 422 a route that judges an upload declares in its OpenAPI schema.
NOT_MRI_422 = (
    f"{ErrorCode.NOT_A_BRAIN_MRI}: the guard scored the image above its threshold (BT_INFERENCE_OOD_MODE=refuse); "
    "`details.ood` holds the verdict"
)


@dataclass(frozen=True)
class LoadedGuard:
    """One guard version's onnxruntime session and metadata."""

    version: str
    session: ort.InferenceSession
    threshold: float
    input_name: str
    features_input_name: str

    @classmethod
    def open(cls, version: str, path: Path, intra_op_threads: int = 0) -> LoadedGuard:
        """The session of a guard fitted on this service's input (``shared.guard_input``); a guard fitted on
        another input kind (an older guard) is INVALID_MODEL: scored on the wrong input, its verdicts would be
        meaningless."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        raw = session.get_modelmeta().custom_metadata_map.get(GUARD_METADATA_KEY)
        if raw is None:
            raise ServiceError(ErrorCode.INVALID_MODEL, f"guard version {version} has no {GUARD_METADATA_KEY} metadata")
        meta = json.loads(raw)
        kind = meta.get("input_kind", "gray32 pixels only (before input kinds)")
        if kind != GUARD_INPUT_KIND:
            raise ServiceError(
                ErrorCode.INVALID_MODEL,
                f"guard version {version} was fitted on input {kind!r}, this service computes {GUARD_INPUT_KIND!r}: "
                "it is not used (retrain, or register a guard of this input kind)",
            )
        return cls(version, session, float(meta["threshold"]), str(meta["input_name"]),
                   str(meta["features_input_name"]))  # fmt: skip

    def score(self, data: bytes, frame: int | None = None, gray: Image.Image | None = None) -> float:
        """The image's score, its input computed exactly as training computed the fitting images' (shared code);
        ``gray``: the file's grayscale decoding when the caller holds it already."""
        inputs = guard_input(data, frame, gray)
        feeds = {self.input_name: inputs.pixels, self.features_input_name: inputs.features}
        return float(self.session.run(None, feeds)[0][0, 0])

    def verdict(self, data: bytes, frame: int | None = None, gray: Image.Image | None = None) -> OodOut:
        score = self.score(data, frame, gray)
        return OodOut(score=round(score, 4), threshold=round(self.threshold, 4), flag=score > self.threshold,
                      guard_version=self.version)  # fmt: skip


class OodGuard:
    """Finds the guard's champion in MLflow (at most every ``refresh_s``), keeps it loaded, and judges images."""

    def __init__(self, store: MlflowStore, mode: str, refresh_s: float = 30.0, intra_op_threads: int = 0) -> None:
        if mode not in OOD_MODES:
            raise ValueError(f"ood mode must be one of {OOD_MODES}, got {mode!r}")
        self.store, self.mode, self.refresh_s, self.intra_op_threads = store, mode, refresh_s, intra_op_threads
        self._lock = threading.Lock()
        self._guard: LoadedGuard | None = None
        self._checked_at: float | None = None
        self._refreshing = False

    def current(self) -> LoadedGuard | None:
        """The loaded champion. The first lookup asks MLflow (the preload thread normally makes it); later ones,
        once ``refresh_s`` has passed, ask in one background thread, so a down or hung MLflow never holds a
        prediction; MLflow failing keeps the last guard."""
        if self.mode == "off":
            return None
        with self._lock:
            if self._checked_at is None:
                self._checked_at = time.monotonic()
                self._guard = self._refreshed()
                return self._guard
            if not self._refreshing and time.monotonic() - self._checked_at >= self.refresh_s:
                self._checked_at = time.monotonic()
                self._refreshing = True
                threading.Thread(target=self._refresh_in_background, name="ood-guard-refresh", daemon=True).start()
            return self._guard

    def _refreshed(self) -> LoadedGuard | None:
        """The champion now, or the last guard when MLflow cannot say."""
        try:
            return self._load_champion()
        except ServiceError as exc:
            logger.warning("the OOD guard could not be refreshed, keeping the last one: %s", exc.message)
        except Exception:  # a background thread has nobody to raise to
            logger.exception("the OOD guard could not be loaded")
        return self._guard

    def _refresh_in_background(self) -> None:
        guard = self._refreshed()
        with self._lock:
            self._guard, self._refreshing = guard, False

    def _load_champion(self) -> LoadedGuard | None:
        found = self.store.champion_version(GUARD_REGISTERED_NAME)
        if found is None:  # no guard registered (yet): answers carry ood null
            return None
        if self._guard is not None and self._guard.version == found.version:
            return self._guard
        record = ModelRecord("guard", GUARD_REGISTERED_NAME, {}, {})
        path = self.store.download(record, found)  # sha256-checked like every model
        guard = LoadedGuard.open(found.version, path, self.intra_op_threads)
        logger.info("OOD guard version %s loaded (mode %s)", found.version, self.mode)
        return guard

    def check(self, data: bytes, frame: int | None = None, gray: Image.Image | None = None) -> OodOut | None:
        """The image's verdict (None: no guard, or mode off); in ``refuse`` mode a flagged image is a 422.
        ``gray``: the file's ``shared.imaging.decode_grayscale``, when the caller decoded it for a model."""
        guard = self.current()
        if guard is None:
            return None
        verdict = guard.verdict(data, frame, gray)
        if verdict.flag and self.mode == "refuse":
            raise ServiceError(
                ErrorCode.NOT_A_BRAIN_MRI,
                f"This image does not look like a brain MRI slice (out-of-distribution score {verdict.score:.2f}, "
                f"threshold {verdict.threshold:.2f}); no tumour class is given for it.",
                {"ood": verdict.model_dump()},
            )
        return verdict
