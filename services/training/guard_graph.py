"""The guard as one ONNX file: (pixels, features, colour) -> ood_score, its thresholds in the metadata.

Two detectors in one graph (docs/ood-guard.md): the mixture over the thumbnail's PCA distances and statistics
(``ood_guard``), and the texture detector on the colour thumbnail (``guard_texture``, its extractor network merged
in with prefixed names). Each score is put on a common scale by its own thresholds, z = (s - flag) / (refusal -
flag), and the guard's score is the larger: inference keeps one score and two thresholds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.training.guard_texture import extractor_graph, texture_nodes
from shared.core.guard_input import COLOUR_SIZE, GUARD_COLOUR_INPUT_NAME, GUARD_FEATURES_INPUT_NAME
from shared.kit.schemas import GUARD_INPUT_NAME, GUARD_METADATA_KEY, GUARD_OUTPUT_NAME

if TYPE_CHECKING:
    from services.training.ood_guard import OodGuard

_OPSET = 17
_MIXTURE_SCORE = "mixture_score"
_TEXTURE_SCORE = "texture_score"


def _constant(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _log_ratio_nodes(source: str, scale: str, out: str) -> list[onnx.NodeProto]:
    """out = log(source / scale + log_offset)."""
    return [
        helper.make_node("Div", [source, scale], [f"{out}_ratio"]),
        helper.make_node("Add", [f"{out}_ratio", "log_offset"], [f"{out}_shifted"]),
        helper.make_node("Log", [f"{out}_shifted"], [out]),
    ]


def _mixture_nodes(guard: OodGuard, log_offset: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(pixels, features) -> the mixture's negative log-likelihood ``_MIXTURE_SCORE`` (N, 1)."""
    gaussians, values = guard.mixture_means.shape
    # Every Gaussian's whitening side by side: vector @ whitening - offsets = each Gaussian's whitened vector.
    stacked = np.concatenate(list(guard.mixture_whitening), axis=1)  # (V, K * V)
    offsets = np.concatenate([m @ w for m, w in zip(guard.mixture_means, guard.mixture_whitening, strict=True)])
    initializers = [
        _constant("mean", guard.mean),
        _constant("basis_t", guard.components.T),  # (D, k)
        _constant("basis", guard.components),  # (k, D)
        _constant("inv_variances", 1.0 / guard.variances),
        _constant("residual_scale", np.array([guard.residual_scale])),
        _constant("mahalanobis_scale", np.array([guard.mahalanobis_scale])),
        _constant("log_offset", np.array([log_offset])),
        _constant("mixture_whitening", stacked),
        _constant("mixture_offsets", offsets),
        _constant("minus_half", np.array([-0.5])),
        _constant("mixture_log_constants", guard.mixture_log_constants),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
        numpy_helper.from_array(np.array([-1, gaussians, values], dtype=np.int64), "per_gaussian_shape"),
    ]
    nodes = [
        helper.make_node("Sub", [GUARD_INPUT_NAME, "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "basis_t"], ["coefficients"]),
        helper.make_node("MatMul", ["coefficients", "basis"], ["rebuilt"]),
        helper.make_node("Sub", ["centred", "rebuilt"], ["residual_vector"]),
        helper.make_node("Mul", ["residual_vector", "residual_vector"], ["residual_squares"]),
        helper.make_node("ReduceSum", ["residual_squares", "axis_1"], ["residual"], keepdims=1),
        helper.make_node("Mul", ["coefficients", "coefficients"], ["coefficient_squares"]),
        helper.make_node("Mul", ["coefficient_squares", "inv_variances"], ["whitened_squares"]),
        helper.make_node("ReduceSum", ["whitened_squares", "axis_1"], ["mahalanobis"], keepdims=1),
        *_log_ratio_nodes("residual", "residual_scale", "log_residual"),
        *_log_ratio_nodes("mahalanobis", "mahalanobis_scale", "log_mahalanobis"),
        helper.make_node("Add", [GUARD_FEATURES_INPUT_NAME, "log_offset"], ["features_shifted"]),
        helper.make_node("Log", ["features_shifted"], ["log_features"]),
        helper.make_node("Concat", ["log_residual", "log_mahalanobis", "log_features"], ["vector"], axis=1),
        helper.make_node("MatMul", ["vector", "mixture_whitening"], ["projected"]),
        helper.make_node("Sub", ["projected", "mixture_offsets"], ["whitened"]),
        helper.make_node("Mul", ["whitened", "whitened"], ["whitened_squares_flat"]),
        helper.make_node("Reshape", ["whitened_squares_flat", "per_gaussian_shape"], ["whitened_squares_by_gaussian"]),
        helper.make_node("ReduceSum", ["whitened_squares_by_gaussian", "axis_2"], ["distances"], keepdims=0),
        helper.make_node("Mul", ["distances", "minus_half"], ["half_distances"]),
        helper.make_node("Add", ["half_distances", "mixture_log_constants"], ["log_likelihoods"]),
        helper.make_node("ReduceLogSumExp", ["log_likelihoods"], ["log_likelihood"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["log_likelihood"], [_MIXTURE_SCORE]),
    ]
    return nodes, initializers


def _normalised(score: str, scale: tuple[float, float]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(score - flag) / (refusal - flag): 0 at the detector's flag threshold, 1 at its refusal threshold."""
    flag, refusal = scale
    constants = [
        _constant(f"{score}_flag", np.array([flag])),
        _constant(f"{score}_inv_range", np.array([1.0 / (refusal - flag)])),
    ]
    nodes = [
        helper.make_node("Sub", [score, f"{score}_flag"], [f"{score}_above_flag"]),
        helper.make_node("Mul", [f"{score}_above_flag", f"{score}_inv_range"], [f"{score}_z"]),
    ]
    return nodes, constants


def guard_onnx(guard: OodGuard) -> bytes:
    """The guard as one ONNX graph: (pixels (N, D), features (N, F), colour (N, 64, 64, 3)) -> ood_score (N, 1)."""
    from services.training.ood_guard import LOG_OFFSET

    if guard.texture is None:
        raise ValueError("a guard without its texture detector cannot be exported (it is fitted by fit_model only)")
    mixture, mixture_constants = _mixture_nodes(guard, LOG_OFFSET)
    texture, texture_constants = texture_nodes(guard.texture, "texture_", _TEXTURE_SCORE)
    z_mixture, z_mixture_constants = _normalised(_MIXTURE_SCORE, guard.mixture_scale)
    z_texture, z_texture_constants = _normalised(_TEXTURE_SCORE, guard.texture_scale)
    extractor = extractor_graph(guard.texture.extractor, "extractor/")
    nodes = [
        *extractor.graph.node, *mixture, *texture, *z_mixture, *z_texture,
        helper.make_node("Max", [f"{_MIXTURE_SCORE}_z", f"{_TEXTURE_SCORE}_z"], [GUARD_OUTPUT_NAME]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "brain_tumor_guard",
        [
            helper.make_tensor_value_info(GUARD_INPUT_NAME, TensorProto.FLOAT, [None, guard.mean.shape[0]]),
            helper.make_tensor_value_info(
                GUARD_FEATURES_INPUT_NAME, TensorProto.FLOAT, [None, guard.mixture_means.shape[1] - 2]
            ),
            helper.make_tensor_value_info(
                GUARD_COLOUR_INPUT_NAME, TensorProto.FLOAT, [None, COLOUR_SIZE, COLOUR_SIZE, 3]
            ),
        ],
        [helper.make_tensor_value_info(GUARD_OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
        [
            *extractor.graph.initializer,
            *mixture_constants,
            *texture_constants,
            *z_mixture_constants,
            *z_texture_constants,
        ],  # fmt: skip
    )
    opsets = {o.domain: o.version for o in extractor.opset_import}
    opsets[""] = max(opsets.get("", _OPSET), _OPSET)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        producer_name="brain-tumor-guard",
    )
    model.ir_version = 8  # readable by every onnxruntime this project pins
    onnx.helper.set_model_props(model, {GUARD_METADATA_KEY: json.dumps(guard.metadata())})
    onnx.checker.check_model(model)
    return model.SerializeToString()
