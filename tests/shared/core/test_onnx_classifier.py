"""OnnxClassifier on real ONNX files: the contract comes from the model, outputs match the original."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.core.contract import CLASS_NAMES, PreprocessingContract
from shared.core.imaging import DecodedImage, decode_to_array, to_model_input
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.errors import ErrorCode, ServiceError

MakeOnnx = Callable[..., tuple[bytes, Any]]


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path


def _flat(image_size: int) -> PreprocessingContract:
    return PreprocessingContract(layout="flat", scaling="unit", image_size=image_size)


@pytest.mark.parametrize(
    ("layout", "scaling", "image_size"),
    [("flat", "unit", 32), ("nhwc", "unit", 32), ("nhwc", "raw", 24), ("flat", "raw", 20)],
)
def test_classify_matches_the_original_estimator(
    tmp_path: Path,
    make_onnx: MakeOnnx,
    sample_images: dict[str, bytes],
    layout: str,
    scaling: str,
    image_size: int,
) -> None:
    contract = PreprocessingContract.model_validate({"layout": layout, "scaling": scaling, "image_size": image_size})
    data, estimator = make_onnx(contract)
    classifier = OnnxClassifier("snn", "7", _write(tmp_path, data))
    assert not classifier.ready
    classifier.load()

    assert classifier.ready
    assert classifier.contract == contract  # read back from the model's metadata
    assert classifier.key == "snn/7"
    for image in sample_images.values():
        started = time.perf_counter()
        result = classifier.classify(image)
        wall_ms = (time.perf_counter() - started) * 1000.0
        pixels = decode_to_array(image, image_size)
        expected = estimator.predict_proba(to_model_input(pixels, _flat(image_size)))[0]
        got = np.array([result.probabilities[name] for name in CLASS_NAMES])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert result.label == CLASS_NAMES[int(np.argmax(expected))]
        assert list(result.probabilities) == list(CLASS_NAMES)
        assert 0 < result.latency_ms <= wall_ms + 0.001  # milliseconds, rounded to the microsecond


def test_bytes_and_a_path_load_the_same_model(
    tmp_path: Path,
    make_onnx: MakeOnnx,
    sample_images: dict[str, bytes],
    sample_arrays: Callable[[int], tuple[np.ndarray, np.ndarray]],
) -> None:
    contract = PreprocessingContract(layout="nhwc", scaling="unit", image_size=24)
    data, estimator = make_onnx(contract)
    from_bytes = OnnxClassifier("cnn", "2", data)
    from_path = OnnxClassifier("cnn", "2", _write(tmp_path, data))
    from_bytes.load()
    from_path.load()

    assert from_bytes.ready
    assert from_bytes.source == data
    assert from_path.source == tmp_path / "model.onnx"
    assert from_bytes.contract == from_path.contract == contract
    pixels, _ = sample_arrays(24)
    expected = estimator.predict_proba(to_model_input(pixels[:12], _flat(24)))
    np.testing.assert_allclose(from_bytes.predict_pixels(pixels[:12]), expected, atol=1e-5)
    np.testing.assert_array_equal(from_bytes.predict_pixels(pixels[:12]), from_path.predict_pixels(pixels[:12]))
    image = sample_images["meningioma"]
    assert from_bytes.classify(image).probabilities == from_path.classify(image).probabilities


def test_bytes_that_are_not_onnx_are_refused_without_echo() -> None:
    classifier = OnnxClassifier("rf", "1", b"PATIENT Jane Doe; not an onnx graph")
    with pytest.raises(ServiceError) as caught:
        classifier.load()
    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert "Jane" not in caught.value.message
    assert not classifier.ready


def test_preprocess_shape_follows_the_contract(tmp_path: Path, make_onnx: MakeOnnx, sample_images) -> None:
    contract = PreprocessingContract(layout="nhwc", scaling="raw", image_size=24)
    classifier = OnnxClassifier("cnn", "1", _write(tmp_path, make_onnx(contract)[0]))
    classifier.load()
    tensor = classifier.preprocess([DecodedImage.decode(sample_images["glioma"])])
    assert tensor.shape == (1, 24, 24, 1)
    assert tensor.dtype == np.float32
    assert tensor.max() > 1.0  # raw scaling: 0..255 reaches the model unchanged


def test_predict_pixels_batches_and_accepts_float_pixels(
    tmp_path: Path, make_onnx: MakeOnnx, sample_arrays: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> None:
    contract = PreprocessingContract(layout="flat", image_size=32)
    data, estimator = make_onnx(contract)
    classifier = OnnxClassifier("rf", "1", _write(tmp_path, data))
    classifier.load()
    pixels, _ = sample_arrays(32)
    batch = pixels[:10]

    probabilities = classifier.predict_pixels(batch)

    assert probabilities.shape == (10, len(CLASS_NAMES))
    assert probabilities.dtype == np.float32
    expected = estimator.predict_proba(to_model_input(batch, contract))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(classifier.predict_pixels(batch.astype(np.float64)), probabilities, atol=1e-6)
    assert classifier.predict_pixels(batch[0]).shape == (1, len(CLASS_NAMES))
    # Bounded runs (the batch endpoint's memory cap) give the same answers, in the same order.
    np.testing.assert_allclose(classifier.predict_pixels(batch, max_batch=3), probabilities, atol=1e-6)
    assert classifier.predict_pixels(batch[:0]).shape == (0, len(CLASS_NAMES))


def test_postprocess_names_the_winning_class(tmp_path: Path, make_onnx: MakeOnnx) -> None:
    classifier = OnnxClassifier("rf", "1", _write(tmp_path, make_onnx(_flat(16))[0]))
    classifier.load()
    scores = classifier.postprocess(np.array([[0.1, 0.2, 0.6, 0.1]], dtype=np.float32))
    label, probabilities = scores.label, scores.probabilities
    assert label == CLASS_NAMES[2]
    assert probabilities == pytest.approx(dict(zip(CLASS_NAMES, [0.1, 0.2, 0.6, 0.1], strict=True)))


def test_model_without_contract_metadata_is_refused(tmp_path: Path, make_onnx: MakeOnnx) -> None:
    data, _ = make_onnx(_flat(16), with_contract=False)
    classifier = OnnxClassifier("rf", "3", _write(tmp_path, data))
    with pytest.raises(ServiceError) as caught:
        classifier.load()
    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert "brain_tumor_contract" in caught.value.message
    assert not classifier.ready


def test_contract_that_disagrees_with_the_graph_is_refused(tmp_path: Path, make_onnx: MakeOnnx) -> None:
    import onnx

    data, _ = make_onnx(_flat(16))
    proto = onnx.load_from_string(data)
    for entry in proto.metadata_props:
        if entry.key == "brain_tumor_contract":
            entry.value = PreprocessingContract(layout="flat", image_size=32).to_json()
    classifier = OnnxClassifier("rf", "3", _write(tmp_path, proto.SerializeToString()))
    with pytest.raises(ServiceError) as caught:
        classifier.load()
    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert "shape" in caught.value.message


def test_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    classifier = OnnxClassifier("rf", "1", _write(tmp_path, b"not an onnx graph"))
    with pytest.raises(ServiceError) as caught:
        classifier.load()
    assert caught.value.code is ErrorCode.INVALID_MODEL


def test_using_a_model_before_load_says_not_ready(tmp_path: Path, sample_images) -> None:
    classifier = OnnxClassifier("rf", "1", tmp_path / "missing.onnx")
    with pytest.raises(ServiceError) as caught:
        classifier.classify(sample_images["glioma"])
    assert caught.value.code is ErrorCode.MODEL_NOT_READY


def test_undecodable_upload_is_invalid_image(tmp_path: Path, make_onnx: MakeOnnx) -> None:
    classifier = OnnxClassifier("rf", "1", _write(tmp_path, make_onnx(_flat(16))[0]))
    classifier.load()
    for data in (b"", b"%PDF-1.7 definitely not an image"):
        with pytest.raises(ServiceError) as caught:
            classifier.classify(data)
        assert caught.value.code is ErrorCode.INVALID_IMAGE


def test_every_onnxruntime_run_is_reported_to_the_observer(
    tmp_path: Path, make_onnx: MakeOnnx, sample_arrays: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> None:
    runs: list[tuple[int, float]] = []
    classifier = OnnxClassifier(
        "rf", "1", _write(tmp_path, make_onnx(_flat(16))[0]), on_run=lambda n, s: runs.append((n, s))
    )
    classifier.load()
    pixels, _ = sample_arrays(16)

    classifier.predict_pixels(pixels[:10], max_batch=4)

    assert [images for images, _ in runs] == [4, 4, 2]
    assert all(seconds > 0 for _, seconds in runs)


def test_a_failing_run_names_the_model_not_the_input(tmp_path: Path, make_onnx: MakeOnnx) -> None:
    classifier = OnnxClassifier("rf", "4", _write(tmp_path, make_onnx(_flat(16))[0]))
    classifier.load()
    with pytest.raises(ServiceError) as caught:
        classifier.predict(np.zeros((2, 3), dtype=np.float32))  # a tensor no caller should have let through
    assert caught.value.code is ErrorCode.INVALID_MODEL
    assert caught.value.message == "Model rf/4 cannot be served: onnxruntime failed on a batch of 2."
