"""The guard's second detector (v4): the texture of the colour thumbnail, as a pretrained network sees it.

The hand-made statistics of ``ood_guard``'s mixture cannot tell an inverted gray photo, a rotated texture on
black corners or a phantom from a slice on black: in every one of them such an image looks like one. Early
ImageNet features can: the colour thumbnail (64x64, already decoded for the statistics) is resized to 96 px and
run through MobileNetV2 up to ``TEXTURE_LAYER`` (66K parameters), whose activations are averaged over the image
(192 values). On their logarithms: a PCA (``TEXTURE_COMPONENTS``), one Ledoit-Wolf Gaussian per class (a single
one without labels), and the score is the smallest Mahalanobis distance to a class plus the PCA residual's squared
norm over the PCA's noise variance (what the components do not explain, which is where a photo differs most).

The network is converted to ONNX once (tf2onnx) and run with onnxruntime for fitting as well, so training scores
exactly what serving scores; ``guard_graph`` merges it into the guard's one ONNX file. docs/ood-guard.md gives the
configurations tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from services.training.weights import resolve_weights
from shared.core.guard_input import COLOUR_SIZE, GUARD_COLOUR_INPUT_NAME

if TYPE_CHECKING:
    import onnxruntime as ort

# Where MobileNetV2 is cut: early blocks see edges and fine texture (what separates a photo from a slice); the
# later ones (block_13, the full network) describe objects and separated the non-MRI set far worse.
TEXTURE_LAYER = "block_6_expand_relu"
# The colour thumbnail is resized to this before the network: at 64 px block 6's map is only 4x4.
TEXTURE_SIZE = 96
# PCA components of the log features. Fitted as shipped (slices and re-uploads), 64 accepts every realistic variant
# at >= 99.2% where 16 let gamma 1.6 fall to 98.98%, for the same real slices and non-MRI images refused
# (cross-validated; docs/ood-guard.md).
TEXTURE_COMPONENTS = 64
# Added before the logarithm: a ReLU average is often exactly 0.
TEXTURE_LOG_OFFSET = 1e-3
# The extractor's output inside the guard's graph.
TEXTURE_FEATURES = "texture_features"
_BATCH = 256


@lru_cache(maxsize=2)
def extractor_onnx(weights: Path | None) -> bytes:
    """The feature extractor as ONNX: colour (N, 64, 64, 3) float32 in 0-255 -> (N, 192). Built from the ImageNet
    weights (``resolve_weights``: never downloaded; without them a clear WEIGHTS_NOT_FOUND error)."""
    path = resolve_weights(weights)
    import keras
    from keras import layers

    from services.training import keras_runtime

    keras_runtime.tensorflow()
    base = keras.applications.MobileNetV2(
        input_shape=(TEXTURE_SIZE, TEXTURE_SIZE, 3), alpha=1.0, include_top=False, weights=None
    )
    base.load_weights(str(path))
    truncated = keras.Model(base.input, base.get_layer(TEXTURE_LAYER).output)
    inputs = keras.Input(shape=(COLOUR_SIZE, COLOUR_SIZE, 3), name=GUARD_COLOUR_INPUT_NAME)
    x = layers.Resizing(TEXTURE_SIZE, TEXTURE_SIZE, interpolation="bilinear")(inputs)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    outputs = layers.GlobalAveragePooling2D()(truncated(x))
    model = keras.Model(inputs, outputs)
    proto = keras_runtime.keras_to_onnx(model, (None, COLOUR_SIZE, COLOUR_SIZE, 3), GUARD_COLOUR_INPUT_NAME)
    return proto.SerializeToString()


@lru_cache(maxsize=4)
def _session(extractor: bytes) -> ort.InferenceSession:
    import onnxruntime as ort

    return ort.InferenceSession(extractor, providers=["CPUExecutionProvider"])


def texture_features(extractor: bytes, colours: np.ndarray) -> np.ndarray:
    """(N, 192) features of colour thumbnails (N, 64, 64, 3) in 0-255, computed by the ONNX extractor."""
    session = _session(extractor)
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: np.asarray(colours[i : i + _BATCH], dtype=np.float32)})[0]
        for i in range(0, len(colours), _BATCH)
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class TextureModel:
    """The fitted detector: PCA of the log features and a Gaussian per class in its space."""

    mean: np.ndarray  # (192,)
    components: np.ndarray  # (k, 192), orthonormal rows
    noise_variance: float
    class_means: np.ndarray  # (C, k)
    class_whitening: np.ndarray  # (C, k, k): Cholesky factor L of each precision (P = L L^T)
    extractor: bytes  # the ONNX extractor the features come from

    def features(self, colours: np.ndarray) -> np.ndarray:
        return texture_features(self.extractor, colours)


def fit_texture(
    features: np.ndarray, labels: np.ndarray | None, extractor: bytes, components: int = TEXTURE_COMPONENTS
) -> TextureModel:
    """PCA and one Ledoit-Wolf Gaussian per class (one in all without labels) on the extractor's features."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    logs = np.log(features.astype(np.float64) + TEXTURE_LOG_OFFSET)
    k = max(1, min(components, len(logs) - 1, logs.shape[1] - 1))
    pca = PCA(k, random_state=0).fit(logs)
    coefficients = pca.transform(logs)
    classes = np.zeros(len(logs), dtype=int) if labels is None else np.asarray(labels)
    means, whitening = [], []
    for label in np.unique(classes):
        covariance = LedoitWolf().fit(coefficients[classes == label])
        means.append(covariance.location_)
        whitening.append(np.linalg.cholesky(covariance.precision_))
    # A floor: with all 192 dimensions explained (a tiny fit) the noise variance would be 0.
    noise = float(max(pca.noise_variance_, 1e-9))
    return TextureModel(pca.mean_, pca.components_, noise, np.array(means), np.array(whitening), extractor)


def texture_scores(model: TextureModel, features: np.ndarray) -> np.ndarray:
    """The detector's scores in numpy (what its ONNX nodes compute); higher is less like an MRI slice."""
    centred = np.log(features.astype(np.float64) + TEXTURE_LOG_OFFSET) - model.mean
    coefficients = centred @ model.components.T
    residual = ((centred - coefficients @ model.components) ** 2).sum(axis=1) / model.noise_variance
    offsets = coefficients[:, np.newaxis, :] - model.class_means[np.newaxis]  # (N, C, k)
    whitened = np.einsum("nck,ckj->ncj", offsets, model.class_whitening)
    return (whitened**2).sum(axis=2).min(axis=1) + residual


def texture_nodes(model: TextureModel, prefix: str, output: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and their constants) from ``TEXTURE_FEATURES`` (N, 192) to the detector's score ``output`` (N, 1);
    every name they add starts with ``prefix``."""
    classes, k = model.class_means.shape
    stacked = np.concatenate(list(model.class_whitening), axis=1)  # (k, C * k)
    offsets = np.concatenate([m @ w for m, w in zip(model.class_means, model.class_whitening, strict=True)])

    def name(part: str) -> str:
        return f"{prefix}{part}"

    constants = {
        "log_offset": np.array([TEXTURE_LOG_OFFSET]),
        "mean": model.mean,
        "basis_t": model.components.T,
        "basis": model.components,
        "inv_noise": np.array([1.0 / model.noise_variance]),
        "whitening": stacked,
        "offsets": offsets,
    }
    initializers = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), name(n)) for n, v in constants.items()]
    initializers += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), name("axis_1")),
        numpy_helper.from_array(np.array([2], dtype=np.int64), name("axis_2")),
        numpy_helper.from_array(np.array([-1, classes, k], dtype=np.int64), name("per_class_shape")),
    ]
    node = helper.make_node
    nodes = [
        node("Add", [TEXTURE_FEATURES, name("log_offset")], [name("shifted")]),
        node("Log", [name("shifted")], [name("logs")]),
        node("Sub", [name("logs"), name("mean")], [name("centred")]),
        node("MatMul", [name("centred"), name("basis_t")], [name("coefficients")]),
        node("MatMul", [name("coefficients"), name("basis")], [name("rebuilt")]),
        node("Sub", [name("centred"), name("rebuilt")], [name("residual_vector")]),
        node("Mul", [name("residual_vector"), name("residual_vector")], [name("residual_squares")]),
        node("ReduceSum", [name("residual_squares"), name("axis_1")], [name("residual_sum")], keepdims=1),
        node("Mul", [name("residual_sum"), name("inv_noise")], [name("residual")]),
        node("MatMul", [name("coefficients"), name("whitening")], [name("projected")]),
        node("Sub", [name("projected"), name("offsets")], [name("whitened")]),
        node("Mul", [name("whitened"), name("whitened")], [name("whitened_squares")]),
        node("Reshape", [name("whitened_squares"), name("per_class_shape")], [name("squares_by_class")]),
        node("ReduceSum", [name("squares_by_class"), name("axis_2")], [name("distances")], keepdims=0),
        node("ReduceMin", [name("distances")], [name("nearest")], axes=[1], keepdims=1),
        node("Add", [name("nearest"), name("residual")], [output]),
    ]
    return nodes, initializers


def extractor_graph(extractor: bytes, prefix: str) -> onnx.ModelProto:
    """The extractor's graph with every name prefixed, reading ``GUARD_COLOUR_INPUT_NAME`` and writing
    ``TEXTURE_FEATURES``: ready to be merged into the guard's graph."""
    model = onnx.compose.add_prefix(onnx.load_from_string(extractor), prefix)
    graph = model.graph
    graph.node.insert(0, helper.make_node("Identity", [GUARD_COLOUR_INPUT_NAME], [graph.input[0].name]))
    graph.node.append(helper.make_node("Identity", [graph.output[0].name], [TEXTURE_FEATURES]))
    return model
