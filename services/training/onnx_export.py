"""ONNX conversion helpers: naming the output, embedding the contract, the parity check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from shared.core.contract import METADATA_KEY, OUTPUT_NAME, PreprocessingContract
from shared.core.onnx_classifier import OnnxClassifier

PARITY_MAX_ABS_DIFF = 1e-4


def keep_only_output(proto: onnx.ModelProto, source_name: str, new_name: str = OUTPUT_NAME) -> onnx.ModelProto:
    """Keep one graph output and give it the agreed name, so every family looks the same to inference."""
    graph = proto.graph
    chosen = [out for out in graph.output if out.name == source_name]
    if not chosen:
        raise ValueError(f"ONNX graph has no output {source_name!r}")
    if source_name != new_name:
        for node in graph.node:
            node.output[:] = [new_name if name == source_name else name for name in node.output]
            node.input[:] = [new_name if name == source_name else name for name in node.input]
        chosen[0].name = new_name
    del graph.output[:]
    graph.output.append(chosen[0])
    return proto


def embed_contract(proto: onnx.ModelProto, contract: PreprocessingContract, extra: dict[str, str]) -> bytes:
    """Write the preprocessing contract (and provenance) into the model's metadata."""
    entries = {METADATA_KEY: contract.to_json(), **extra}
    existing = {prop.key: prop for prop in proto.metadata_props}
    for key, value in entries.items():
        if key in existing:
            existing[key].value = value
        else:
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def embedded_contract(proto: onnx.ModelProto) -> PreprocessingContract:
    """The preprocessing contract written into the ONNX file (what inference will read back)."""
    raw = next((prop.value for prop in proto.metadata_props if prop.key == METADATA_KEY), None)
    if raw is None:
        raise ValueError(f"the ONNX model has no {METADATA_KEY!r} metadata (the preprocessing contract)")
    return PreprocessingContract.from_json(raw)


def exported_classifier(model_bytes: bytes, intra_op_threads: int = 2) -> OnnxClassifier:
    """The exported model (its contract embedded) loaded by the project's one ONNX runner, as inference will."""
    classifier = OnnxClassifier("exported", "0", model_bytes, intra_op_threads)
    classifier.load()
    return classifier


def onnx_probabilities(model_bytes: bytes, tensor: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities from an exported model (its contract embedded) for a prepared input tensor."""
    return exported_classifier(model_bytes).predict(tensor, batch_size)


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    argmax_agreement: float
    images: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= PARITY_MAX_ABS_DIFF and self.argmax_agreement == 1.0


def check_parity(native: np.ndarray, converted: np.ndarray) -> ParityReport:
    """ONNX and native probabilities on the same held-out images must agree."""
    diff = float(np.abs(native.astype(np.float64) - converted.astype(np.float64)).max()) if len(native) else 0.0
    agreement = float((native.argmax(1) == converted.argmax(1)).mean()) if len(native) else 1.0
    return ParityReport(max_abs_diff=diff, argmax_agreement=agreement, images=len(native))
