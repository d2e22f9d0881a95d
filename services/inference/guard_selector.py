"""Which guard judges uploads (docs/ood-guard.md), and how its verdict is applied.

The guard is the ``champion`` of ``brain-tumor-guard`` in MLflow (``guard.Guard``, a servable), downloaded and
checked against its sha256 like every model. Modes (``BT_INFERENCE_OOD_MODE``): ``refuse`` answers 422
NOT_A_BRAIN_MRI above the threshold, ``flag`` answers with ``ood.flag`` true, ``off`` skips the guard (``ood``
null). Without a registered guard (or while MLflow has never answered) answers carry ``ood: null`` and nothing
is refused: the guard fails open, the classifiers still answer.
"""

from __future__ import annotations

import logging
import threading
import time

from services.inference.catalog import ModelRecord
from services.inference.guard import GUARD_MODEL, Guard
from services.inference.mlflow_store import MlflowStore
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import GUARD_REGISTERED_NAME, OodOut

logger = logging.getLogger(__name__)

OOD_MODES = ("refuse", "flag", "off")
# The 422 a route that judges an upload declares in its OpenAPI schema.
NOT_MRI_422 = (
    f"{ErrorCode.NOT_A_BRAIN_MRI}: the guard scored the image above its threshold, or the DICOM file declares another "
    "modality than MR (BT_INFERENCE_OOD_MODE=refuse); `details.ood` holds the verdict"
)


class GuardSelector:
    """Finds the guard's champion in MLflow (at most every ``refresh_s``) and keeps it loaded."""

    def __init__(self, store: MlflowStore, mode: str, refresh_s: float = 30.0, intra_op_threads: int = 0) -> None:
        if mode not in OOD_MODES:
            raise ValueError(f"ood mode must be one of {OOD_MODES}, got {mode!r}")
        self.store, self.mode, self.refresh_s, self.intra_op_threads = store, mode, refresh_s, intra_op_threads
        self._lock = threading.Lock()
        self._guard: Guard | None = None
        self._checked_at: float | None = None
        self._refreshing = False

    def current(self) -> Guard | None:
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

    def _refreshed(self) -> Guard | None:
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

    def _load_champion(self) -> Guard | None:
        found = self.store.champion_version(GUARD_REGISTERED_NAME)
        if found is None:  # no guard registered (yet): answers carry ood null
            return None
        if self._guard is not None and self._guard.version == found.version:
            return self._guard
        record = ModelRecord(GUARD_MODEL, GUARD_REGISTERED_NAME, {}, {})
        path = self.store.download(record, found)  # sha256-checked like every model
        guard = Guard(found.version, path, self.intra_op_threads)
        guard.load()
        logger.info("OOD guard version %s loaded (mode %s)", found.version, self.mode)
        return guard

    def apply(self, verdict: OodOut) -> OodOut:
        """The verdict as the mode says: in ``refuse`` mode a flagged image is a 422 NOT_A_BRAIN_MRI."""
        if verdict.flag and self.mode == "refuse":
            why = (
                f"the DICOM file declares modality {verdict.declared_modality}, not MR"
                if verdict.declared_modality
                else f"out-of-distribution score {verdict.score:.2f}, threshold {verdict.threshold:.2f}"
            )
            raise ServiceError(
                ErrorCode.NOT_A_BRAIN_MRI,
                f"This image does not look like a brain MRI slice ({why}); no tumour class is given for it.",
                {"ood": verdict.model_dump()},
            )
        return verdict
