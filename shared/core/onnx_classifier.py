"""One ONNX classifier: load the session and its preprocessing contract, then classify images.

The one ONNX runner of the project: inference serves with it (``open_session`` opens every session it runs,
the guard's included), training checks its exported files and draws its LIME overlays with it. The contract
(image size, scaling, layout, class order) is read from the model's own metadata, so a model can never be fed
a tensor prepared for another one. It has the servable methods inference runs every model through
(``load``, ``ready``, ``preprocess``, ``predict``, ``postprocess``). Needs onnxruntime (the ``[serve]`` extra).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from shared.core.conformal import CONFORMAL_METADATA_KEY, ConformalSets
from shared.core.contract import METADATA_KEY, OUTPUT_NAME, PreprocessingContract
from shared.core.imaging import DecodedImage, to_model_input
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

# Called after every onnxruntime run with (images in the run, seconds it took).
RunObserver = Callable[[int, float], None]


@dataclass(frozen=True)
class Classification:
    """The answer for one image."""

    label: str
    probabilities: dict[str, float]
    latency_ms: float


@dataclass(frozen=True)
class ClassScores:
    """One row of probabilities read: the winning label, every class's probability, and for a model made of
    others (the ensemble) the member versions that answered."""

    label: str
    probabilities: dict[str, float]
    members: dict[str, str] | None = None


def open_session(source: Path | bytes, intra_op_threads: int = 0) -> ort.InferenceSession:
    """The one way a session is opened, for every model and the guard: CPU, the given intra-op threads, no
    spinning, one inter-op thread. onnxruntime's own errors (a bad file) propagate to the caller."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Idle intra-op threads would spin for the next run: on a few cores shared with decoding and the
    # event loop that doubles the CPU one run costs (measured on the CNN, 2 threads: 13.6 -> 6.9 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # One request is one small graph run; parallelism comes from concurrent requests.
    options.inter_op_num_threads = 1
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An ONNX model (a file's path, or the serialised bytes) with its contract; ``ready`` once
    ``load()`` succeeded.

    ``on_run``, when set, hears of every onnxruntime run (images, seconds): a service records its
    metrics there without this runner knowing about them.
    """

    def __init__(
        self,
        name: str,
        version: str,
        source: Path | bytes,
        intra_op_threads: int = 0,
        *,
        on_run: RunObserver | None = None,
    ) -> None:
        self.name = name
        self.version = str(version)
        self.source = source if isinstance(source, bytes) else Path(source)
        self.intra_op_threads = intra_op_threads
        self.on_run = on_run
        self.ready = False
        self._session: ort.InferenceSession | None = None
        self._contract: PreprocessingContract | None = None
        # The prediction sets' thresholds, when training wrote them (shared.core.conformal).
        self.conformal: ConformalSets | None = None
        self._batch_limit: int | None = None
        self._load_lock = threading.Lock()

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def contract(self) -> PreprocessingContract:
        if self._contract is None:
            raise self._not_ready()
        return self._contract

    def _not_ready(self) -> ServiceError:
        return ServiceError(ErrorCode.MODEL_NOT_READY, f"Model {self.key} is not loaded yet.")

    def _invalid(self, problem: str) -> ServiceError:
        return ServiceError(ErrorCode.INVALID_MODEL, f"Model {self.key} cannot be served: {problem}")

    def load(self) -> None:
        """Open the onnxruntime session and check the model against its contract (idempotent)."""
        with self._load_lock:
            if self.ready:
                return
            try:
                session = open_session(self.source, self.intra_op_threads)
            except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
                logger.exception("cannot open %s", self._where())
                raise self._invalid("the ONNX file could not be opened.") from exc
            self._contract = self._read_contract(session)
            self.conformal = self._read_conformal(session)
            self._batch_limit = self._check_signature(session, self._contract)
            self._session = session
            self.ready = True
            logger.info("loaded %s from %s (%s)", self.key, self._where(), self._contract.model_dump())

    def _where(self) -> str:
        return f"{len(self.source)} bytes" if isinstance(self.source, bytes) else str(self.source)

    def _read_contract(self, session: ort.InferenceSession) -> PreprocessingContract:
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise self._invalid(f"its metadata has no {METADATA_KEY!r} entry (the preprocessing contract).")
        try:
            return PreprocessingContract.from_json(raw)
        except (ValueError, ValidationError) as exc:
            raise self._invalid(f"its {METADATA_KEY!r} metadata is not a valid contract.") from exc

    def _read_conformal(self, session: ort.InferenceSession) -> ConformalSets | None:
        raw = session.get_modelmeta().custom_metadata_map.get(CONFORMAL_METADATA_KEY)
        if raw is None:
            return None  # registered before prediction sets: answered without them
        try:
            return ConformalSets.from_json(raw)
        except (ValueError, ValidationError) as exc:
            raise self._invalid(f"its {CONFORMAL_METADATA_KEY!r} metadata is not valid.") from exc

    def _check_signature(self, session: ort.InferenceSession, contract: PreprocessingContract) -> int | None:
        """Check input and output names and shapes; return a fixed batch size if the graph has one."""
        inputs = {i.name: i for i in session.get_inputs()}
        if contract.input_name not in inputs:
            raise self._invalid(f"expected an input named {contract.input_name!r}, found {sorted(inputs)}.")
        outputs = {o.name: o for o in session.get_outputs()}
        if OUTPUT_NAME not in outputs:
            raise self._invalid(f"expected an output named {OUTPUT_NAME!r}, found {sorted(outputs)}.")
        expected = contract.input_shape()
        shape = inputs[contract.input_name].shape
        # Symbolic dimensions come back as strings or None; only fixed ints can disagree.
        if len(shape) != len(expected) or any(
            isinstance(got, int) and want is not None and got != want
            for got, want in zip(shape, expected, strict=False)
        ):
            raise self._invalid(f"its input has shape {shape}, the contract implies {list(expected)}.")
        out_shape = outputs[OUTPUT_NAME].shape
        n_classes = len(contract.class_names)
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != n_classes):
            raise self._invalid(f"its output has shape {out_shape}, expected (N, {n_classes}).")
        batch = shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None

    def _require_session(self) -> ort.InferenceSession:
        if self._session is None:
            raise self._not_ready()
        return self._session

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one image's row of the model's input (the contract's, without the batch)."""
        return tuple(int(d) for d in self.contract.input_shape()[1:] if d is not None)

    def preprocess(self, images: Sequence[DecodedImage]) -> np.ndarray:
        """Decoded images to the (N, ...) float32 tensor the contract describes."""
        contract = self.contract
        return to_model_input(np.stack([image.at(contract.image_size) for image in images]), contract)

    def preprocess_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """A caller's own model tensor (the Open Inference Protocol's FP32 input): checked against the contract."""
        if tensor.dtype != np.float32 or tensor.shape[1:] != self.input_shape or len(tensor) == 0:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"Model {self.key} takes float32 tensors of shape (N, {', '.join(map(str, self.input_shape))}) "
                f"with N >= 1; got {tensor.dtype} {tuple(tensor.shape)}.",
            )
        return tensor

    def predict(self, tensor: np.ndarray, max_batch: int | None = None) -> np.ndarray:
        """Model input tensor (N, ...) to class probabilities (N, classes) as float32.

        At most ``max_batch`` images go into one session run (and never more than a fixed batch
        size the graph may have), which bounds the memory a large batch needs.
        """
        session = self._require_session()
        step = min(self._batch_limit or len(tensor) or 1, max_batch or len(tensor) or 1)
        parts = [self._run(session, tensor[start : start + step]) for start in range(0, len(tensor), step)]
        if not parts:
            return np.empty((0, len(self.contract.class_names)), dtype=np.float32)
        return np.asarray(np.concatenate(parts, axis=0), dtype=np.float32)

    def _run(self, session: ort.InferenceSession, tensor: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        # onnxruntime raises its own untyped errors. Callers refuse tensors that do not fit the contract before
        # they get here, so what is left is the model's failure.
        try:
            probabilities = session.run([OUTPUT_NAME], {self.contract.input_name: tensor})[0]
        except Exception as exc:
            logger.exception("onnxruntime failed on %s for a tensor of shape %s", self.key, tensor.shape)
            raise self._invalid(f"onnxruntime failed on a batch of {len(tensor)}.") from exc
        if self.on_run is not None:
            self.on_run(len(tensor), time.perf_counter() - started)
        return np.asarray(probabilities)

    def postprocess(self, probabilities: np.ndarray) -> ClassScores:
        """One row of probabilities to the winning label and a class -> probability mapping."""
        row = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        names = self.contract.class_names
        if len(row) != len(names):
            raise self._invalid(f"it returned {len(row)} scores for {len(names)} classes.")
        return ClassScores(names[int(np.argmax(row))], {name: float(p) for name, p in zip(names, row, strict=True)})

    def predict_pixels(self, pixels: np.ndarray, max_batch: int | None = None) -> np.ndarray:
        """Decoded grayscale images, uint8 (N, size, size) or (size, size), to probabilities (N, classes).

        For callers that already hold pixels, e.g. LIME perturbing one image many times. Converted
        to the model's tensor ``max_batch`` images at a time, so memory stays bounded.
        """
        array = np.asarray(pixels)
        if array.dtype != np.uint8:
            # Perturbation libraries hand back floats; round and clip rather than wrap around.
            array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        if array.ndim == 2:
            array = array[np.newaxis]
        step = max_batch or len(array) or 1
        parts = [
            self.predict(to_model_input(array[start : start + step], self.contract), max_batch)
            for start in range(0, len(array), step)
        ]
        if not parts:
            return np.empty((0, len(self.contract.class_names)), dtype=np.float32)
        return np.concatenate(parts, axis=0)

    def classify(self, data: bytes) -> Classification:
        """Image file bytes to label and probabilities, timing preprocessing and the model."""
        started = time.perf_counter()
        scores = self.postprocess(self.predict(self.preprocess([DecodedImage.decode(data)]))[0])
        return Classification(scores.label, scores.probabilities, round((time.perf_counter() - started) * 1000.0, 3))
