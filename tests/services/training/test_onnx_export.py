"""ONNX helpers: the contract is embedded and read back, the parity check can fail."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from services.training.onnx_export import check_parity, embed_contract, keep_only_output
from shared.core.contract import METADATA_KEY, OUTPUT_NAME, PreprocessingContract


def softmax_graph() -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["input"], ["out_probs"], axis=1)
    extra = helper.make_node("Identity", ["out_probs"], ["other"])
    graph = helper.make_graph(
        [node, extra],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [
            helper.make_tensor_value_info("other", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("out_probs", TensorProto.FLOAT, [None, 4]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_output_is_renamed_and_contract_embedded() -> None:
    contract = PreprocessingContract(layout="flat")
    proto = keep_only_output(softmax_graph(), "out_probs", OUTPUT_NAME)
    model_bytes = embed_contract(proto, contract, {"family": "test"})
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    meta = session.get_modelmeta().custom_metadata_map
    assert PreprocessingContract.from_json(meta[METADATA_KEY]) == contract and meta["family"] == "test"
    result = session.run([OUTPUT_NAME], {"input": np.zeros((2, 4), np.float32)})[0]
    np.testing.assert_allclose(result, 0.25)


def test_parity_check_passes_and_fails() -> None:
    native = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1]], np.float32)
    assert check_parity(native, native + 5e-5).passed
    assert not check_parity(native, native + 2e-4).passed
    flipped = native[:, [1, 0, 2, 3]]
    report = check_parity(native, flipped)
    assert not report.passed and report.argmax_agreement == 0.0
