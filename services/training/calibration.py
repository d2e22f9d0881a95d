"""Probability calibration: the calibration slice, temperature scaling, and the figures that measure it.

Every family is calibrated the same way: its probabilities ``p`` become ``softmax(log(clip(p, eps, 1)) / T)``.
For the networks, whose output is already a softmax, ``log p`` is the logits up to a constant per image, so this
is exactly temperature scaling on the logits. The forest's vote shares can be 0; the clip at ``eps`` makes their
log finite (a zero vote becomes a small, not an impossible, probability), and one temperature then softens or
sharpens the votes. ``T`` is fitted by minimising the negative log-likelihood on a calibration slice of the
training images (never the test split), and kept only where it lowers the slice's ECE too.

The calibration is appended to the exported ONNX graph (Clip -> Log -> Mul(1/T) -> Softmax, output still named
``probabilities``), so inference, compare, explain, the Open Inference Protocol route and ``mlflow.pyfunc`` all
answer calibrated probabilities with no second code path. ``T`` is also written into the model's metadata
(``CALIBRATION_METADATA_KEY``) for information.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from scipy.optimize import minimize_scalar

from services.training.data import PreparedData
from services.training.splits import split_train_test
from shared.core.conformal import CONFORMAL_METADATA_KEY, ConformalSets
from shared.core.contract import OUTPUT_NAME
from shared.core.dataset import LabelledFiles, load_arrays
from shared.core.temperature import PROBABILITY_EPS, apply_temperature, log_probabilities, softmax

# The share of the training images held out to fit the calibration (and the ensemble's weights).
CALIBRATION_FRACTION = 0.1
# Equal-width bins of top-label confidence for the expected calibration error.
ECE_BINS = 15
# Bounds of the fitted temperature: a slice of a few images must not drive it to 0 or infinity.
TEMPERATURE_BOUNDS = (0.05, 20.0)
CALIBRATION_METADATA_KEY = "brain_tumor_calibration"


def calibration_split(
    labels: np.ndarray, groups: np.ndarray, seed: int, fraction: float = CALIBRATION_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, calibration) of the training images: the test split's own group-aware splitter, so no
    near-duplicate group straddles the two and the calibration slice is as unseen as the test split.

    Too few groups to carve a slice (a toy folder): no slice, so the temperature stays 1 and weights equal."""
    if len(np.unique(groups)) < max(2, round(1.0 / fraction)):
        return np.arange(len(labels)), np.empty(0, dtype=int)
    return split_train_test(labels, groups, fraction, seed + 2)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), with p clipped at 1e-12 so one confident miss is large but finite."""
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, eps: float = PROBABILITY_EPS) -> float:
    """The temperature minimising the NLL of ``labels`` (a bounded 1-D search over log T), kept only where it also
    lowers the slice's ECE; 1.0 otherwise, and with no images."""
    if len(labels) == 0:
        return 1.0
    log_p = log_probabilities(probabilities, eps)

    def nll(log_t: float) -> float:
        return negative_log_likelihood(softmax(log_p / np.exp(log_t)), labels)

    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    best = float(np.exp(result.x))
    # The identity unless the temperature lowers both the NLL and the ECE on the slice: a model already calibrated
    # (the NLL's optimum near 1) would otherwise take a temperature the slice's noise chose (docs/calibration.md).
    fitted, identity = apply_temperature(probabilities, best, eps), apply_temperature(probabilities, 1.0, eps)
    lowers_nll = negative_log_likelihood(fitted, labels) < negative_log_likelihood(identity, labels)
    lowers_ece = expected_calibration_error(fitted, labels) < expected_calibration_error(identity, labels)
    return best if lowers_nll and lowers_ece else 1.0


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-label confidence: sum over equal-width bins of |accuracy - confidence| x share of images."""
    if len(labels) == 0:
        return 0.0
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 (impossible for a top label) goes to bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += abs(correct[chosen].mean() - confidence[chosen].mean()) * chosen.mean()
    return float(total)


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum over classes of (p - one-hot)^2 (0 best, 2 worst)."""
    if len(labels) == 0:
        return 0.0
    probabilities = np.asarray(probabilities, dtype=np.float64)
    one_hot = np.eye(probabilities.shape[1])[labels]
    return float(((probabilities - one_hot) ** 2).sum(axis=1).mean())


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: mean confidence, accuracy and image count (NaN where empty), for the reliability diagram."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1) if len(labels) else np.empty(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(labels) else np.empty(0, bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    mean_conf, accuracy, counts = np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins, dtype=int)
    for b in range(bins):
        chosen = which == b
        counts[b] = int(chosen.sum())
        if counts[b]:
            mean_conf[b], accuracy[b] = confidence[chosen].mean(), correct[chosen].mean()
    return mean_conf, accuracy, counts


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    return {
        f"{prefix}ece": expected_calibration_error(probabilities, labels),
        f"{prefix}brier": brier_score(probabilities, labels),
        f"{prefix}nll": negative_log_likelihood(probabilities, labels),
    }


# The miscoverage the run's own figures report prediction sets at (a service may serve another, docs/referral.md).
REPORTED_ALPHA = 0.05


def set_metrics(
    probabilities: np.ndarray, labels: np.ndarray, conformal: ConformalSets, alpha: float = REPORTED_ALPHA,
    prefix: str = "test_",
) -> dict[str, float]:  # fmt: skip
    """Prediction sets on labelled images: how often they hold the true class, their mean size, how often they
    hold anything but exactly one class (referred: none or several), and the accuracy of the answers not referred."""
    sets = [conformal.prediction_set(row, alpha) for row in probabilities]
    covered = np.array([label in members for members, label in zip(sets, labels, strict=True)])
    single = np.array([len(members) == 1 for members in sets])
    right = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
    metrics = {
        f"{prefix}set_coverage": float(covered.mean()),
        f"{prefix}set_mean_size": float(np.mean([len(members) for members in sets])),
        f"{prefix}set_referral_rate": float(1.0 - single.mean()),
    }
    if single.any():  # undefined when every answer is referred (a tiny test split): not logged as NaN
        metrics[f"{prefix}accuracy_not_referred"] = float(right[single].mean())
    return metrics


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and how it was fitted (written into the model's metadata)."""

    temperature: float
    eps: float = PROBABILITY_EPS
    calibration_images: int = 0
    method: str = "temperature scaling of log(clip(p, eps, 1))"
    # The prediction sets' thresholds, fitted on the same slice's calibrated probabilities (shared.core.conformal).
    conformal: ConformalSets | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "temperature": self.temperature,
                "eps": self.eps,
                "calibration_images": self.calibration_images,
            }
        )


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]


def _set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
    entry.key, entry.value = key, value


def calibrate_graph(proto: onnx.ModelProto, calibration: Calibration) -> onnx.ModelProto:
    """Append Clip -> Log -> Mul(1/T) -> Softmax after the graph's ``probabilities`` output (in place).

    The output keeps its name, shape and float32 type, so every reader of the model is unchanged.
    """
    graph = proto.graph
    raw = f"{OUTPUT_NAME}_uncalibrated"
    _rename_output(graph, OUTPUT_NAME, raw)
    prefix = "calibration_"
    graph.initializer.extend(
        [
            helper.make_tensor(f"{prefix}eps", TensorProto.FLOAT, [], [calibration.eps]),
            helper.make_tensor(f"{prefix}one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor(f"{prefix}inverse_t", TensorProto.FLOAT, [], [1.0 / calibration.temperature]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Clip", [raw, f"{prefix}eps", f"{prefix}one"], [f"{prefix}clipped"]),
            helper.make_node("Log", [f"{prefix}clipped"], [f"{prefix}log"]),
            helper.make_node("Mul", [f"{prefix}log", f"{prefix}inverse_t"], [f"{prefix}scaled"]),
            helper.make_node("Softmax", [f"{prefix}scaled"], [OUTPUT_NAME], axis=1),
        ]
    )
    default_opset = next((o for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    # Clip with min/max inputs needs opset 11, Softmax over one axis of 2-D input is the same from 1 to 13+.
    if default_opset is None:
        proto.opset_import.append(helper.make_opsetid("", 13))
    elif default_opset.version < 11:
        default_opset.version = 13
    _set_metadata(proto, CALIBRATION_METADATA_KEY, calibration.to_json())
    if calibration.conformal is not None:
        _set_metadata(proto, CONFORMAL_METADATA_KEY, calibration.conformal.to_json())
    onnx.checker.check_model(proto)
    return proto


def calibrated_bytes(model_bytes: bytes, calibration: Calibration) -> bytes:
    """An exported model's bytes with the calibration appended."""
    return calibrate_graph(onnx.load_from_string(model_bytes), calibration).SerializeToString()


@dataclass
class CalibrationSlice:
    """The training images held out to fit the calibration and the ensemble's weights; decoded once per size."""

    files: LabelledFiles
    cache_dir: Path | None
    groups: np.ndarray  # each image's near-duplicate group (the guard's cross-validation keeps groups together)
    _arrays: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> np.ndarray:
        return self.files.labels

    def pixels(self, size: int) -> np.ndarray:
        if size not in self._arrays:
            self._arrays[size] = load_arrays(self.files, size, self.cache_dir)
        return self._arrays[size]


def carve_calibration_slice(data: PreparedData, seed: int) -> tuple[PreparedData, CalibrationSlice]:
    """The run's data less the calibration slice (what the search and the refit see), and the slice."""
    fit_idx, calibration_idx = calibration_split(data.train_labels, data.train_groups, seed)
    files = data.train_files
    fit_files = LabelledFiles(tuple(files.paths[i] for i in fit_idx), files.labels[fit_idx])
    slice_files = LabelledFiles(tuple(files.paths[i] for i in calibration_idx), files.labels[calibration_idx])
    info = {**data.info, "train_images": len(fit_idx), "calibration_images": len(calibration_idx)}
    fit_data = replace(data, train_files=fit_files, train_groups=data.train_groups[fit_idx], info=info, _arrays={})
    return fit_data, CalibrationSlice(slice_files, data.cache_dir, data.train_groups[calibration_idx])
