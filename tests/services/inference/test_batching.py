"""Dynamic batching on real ONNX models: concurrent requests share runs, each gets its own row, errors reach
every waiter, the queue is bounded, and batching off still answers the same."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.inference.config import Settings
from services.inference.metrics import run_recorder
from services.inference.runner import Batcher, Runner
from shared.core.contract import CLASS_NAMES, METADATA_KEY, OUTPUT_NAME, PreprocessingContract
from shared.core.imaging import DecodedImage
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import PIXELS_SHAPE_HEADER
from shared.kit.workers import usable_cpus

T = TypeVar("T")
# onnxruntime's float32 GEMM sums in another order for a batch than for one row: a row agrees with its lone run to
# about 1e-6, not bit for bit. Rows of different inputs differ by far more, so a row handed to the wrong request fails.
ROW_ATOL = 1e-5
MakeOnnx = Callable[..., tuple[bytes, Any]]
FLAT16 = PreprocessingContract(layout="flat", scaling="unit", image_size=16)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _loaded(make_onnx: MakeOnnx, contract: PreprocessingContract = FLAT16, version: str = "1") -> OnnxClassifier:
    # As the registry builds it: its runs are recorded in the inference metrics.
    classifier = OnnxClassifier("snn", version, make_onnx(contract)[0], on_run=run_recorder("snn", version))
    classifier.load()
    return classifier


def _tensors(classifier: OnnxClassifier, count: int) -> list[np.ndarray]:
    """``count`` different single-image tensors in the classifier's contract shape."""
    rng = np.random.default_rng(7)
    shape = classifier.contract.input_shape(1)
    return [rng.random(shape, dtype=np.float32) for _ in range(count)]


def _sample(name: str, model: str, version: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model, "version": version}) or 0.0


def _batch_series(model: str, version: str) -> tuple[float, float]:
    """(runs recorded, images recorded) in the batch-size histogram."""
    runs = _sample("bt_inference_batch_size_count", model, version)
    return runs, _sample("bt_inference_batch_size_sum", model, version)


def _batch_only_model() -> bytes:
    """A real model exported with a batch of 1 written into a Reshape: one image runs, a batch of several fails
    inside onnxruntime (as graphs traced at batch 1 do)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = FLAT16.image_size**2
    weights = np.random.default_rng(0).normal(size=(features, len(CLASS_NAMES))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", [FLAT16.input_name, "one_row"], ["row"]),
            helper.make_node("MatMul", ["row", "weights"], ["scores"]),
            helper.make_node("Softmax", ["scores"], [OUTPUT_NAME], axis=1),
        ],
        "batch_of_one",
        [helper.make_tensor_value_info(FLAT16.input_name, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", len(CLASS_NAMES)])],
        [
            numpy_helper.from_array(np.array([1, features], dtype=np.int64), "one_row"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, FLAT16.to_json()
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# -- settings ----------------------------------------------------------------------------------------------


def test_batching_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.batching, defaults.batch_window_ms) == (True, 0.0)  # as measured best (see the setting)
    monkeypatch.setenv("BT_INFERENCE_BATCHING", "true")
    monkeypatch.setenv("BT_INFERENCE_BATCH_WINDOW_MS", "5")
    monkeypatch.setenv("BT_INFERENCE_MAX_BATCH", "16")
    monkeypatch.setenv("BT_INFERENCE_MAX_QUEUE", "64")
    settings = Settings()
    assert (settings.batching, settings.batch_window_ms, settings.max_batch, settings.max_queue) == (
        True,
        5.0,
        16,
        64,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BT_INFERENCE_BATCH_WINDOW_MS", "-1"),
        ("BT_INFERENCE_BATCH_WINDOW_MS", "5000"),
        ("BT_INFERENCE_MAX_BATCH", "0"),
        ("BT_INFERENCE_MAX_QUEUE", "0"),
        ("BT_INFERENCE_BATCHING", "sometimes"),
    ],
)
def test_bad_batching_settings_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


def test_session_threads_follow_the_runs_that_go_in_parallel() -> None:
    # Batching runs one batch per model at a time: it may use every CPU of its worker's share; unbatched, every
    # request runs at once.
    assert Settings(batching=True).session_threads() == usable_cpus()
    assert Settings(batching=True, workers=usable_cpus()).session_threads() == 1
    assert Settings(batching=False).session_threads() == 1
    assert Settings(batching=False, intra_op_threads=3).session_threads() == 3


# -- the batcher on a real classifier ----------------------------------------------------------------------


def test_concurrent_tensors_share_one_run_and_each_gets_its_own_rows(make_onnx: MakeOnnx) -> None:
    classifier = _loaded(make_onnx)
    tensors = _tensors(classifier, 8)
    tensors[3] = np.concatenate(_tensors(classifier, 3))  # a request of three images takes three rows
    expected = [classifier.predict(tensor) for tensor in tensors]

    async def scenario() -> tuple[list[np.ndarray], int]:
        batcher = Batcher(classifier, window_s=0.5, max_batch=32, max_queue=64)
        answers = await asyncio.gather(*(batcher.predict(tensor) for tensor in tensors))
        await batcher.close()
        return answers, batcher.runs

    answers, runs = _run(scenario())
    assert runs == 1
    for got, want in zip(answers, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ROW_ATOL)


def test_a_batch_never_exceeds_max_batch(make_onnx: MakeOnnx) -> None:
    classifier = _loaded(make_onnx, version="21")
    tensors = _tensors(classifier, 10)
    runs_before, images_before = _batch_series("snn", "21")

    async def scenario() -> tuple[list[np.ndarray], int]:
        batcher = Batcher(classifier, window_s=0.05, max_batch=4, max_queue=64)
        answers = await asyncio.gather(*(batcher.predict(tensor) for tensor in tensors))
        await batcher.close()
        return answers, batcher.runs

    answers, runs = _run(scenario())
    runs_after, images_after = _batch_series("snn", "21")
    assert runs == 3  # 4 + 4 + 2
    assert (runs_after - runs_before, images_after - images_before) == (3, 10)
    last_run = {"model": "snn", "version": "21", "le": "2.0"}
    assert REGISTRY.get_sample_value("bt_inference_batch_size_bucket", last_run) == 1
    assert _sample("bt_inference_queue_wait_seconds_count", "snn", "21") == 10
    np.testing.assert_allclose(np.concatenate(answers), classifier.predict(np.concatenate(tensors)), atol=ROW_ATOL)


def test_an_error_in_a_batch_reaches_every_waiter_and_the_batcher_goes_on() -> None:
    classifier = OnnxClassifier("cnn", "9", _batch_only_model())
    classifier.load()
    tensors = _tensors(classifier, 3)

    async def scenario() -> tuple[list[Any], np.ndarray, int]:
        batcher = Batcher(classifier, window_s=0.5, max_batch=32, max_queue=64)
        failed = await asyncio.gather(*(batcher.predict(tensor) for tensor in tensors), return_exceptions=True)
        alone = await batcher.predict(tensors[0])  # a batch of one fits this model
        await batcher.close()
        return failed, alone, batcher.runs

    failed, alone, runs = _run(scenario())
    assert runs == 2
    for error in failed:
        assert isinstance(error, ServiceError)
        assert error.code is ErrorCode.INVALID_MODEL
        assert "cnn/9" in error.message and "batch of 3" in error.message
    np.testing.assert_allclose(alone, classifier.predict(tensors[0]), atol=ROW_ATOL)


def test_a_malformed_tensor_fails_alone(make_onnx: MakeOnnx) -> None:
    classifier = _loaded(make_onnx)
    good = _tensors(classifier, 2)
    bad = [np.zeros((1, 15), dtype=np.float32), good[0].astype(np.float64), good[0][:0]]

    async def scenario() -> list[Any]:
        batcher = Batcher(classifier, window_s=0.2, max_batch=32, max_queue=64)
        answers = await asyncio.gather(*(batcher.predict(t) for t in [good[0], *bad, good[1]]), return_exceptions=True)
        await batcher.close()
        return answers

    answers = _run(scenario())
    for error in answers[1:-1]:
        assert isinstance(error, ServiceError)
        assert error.code is ErrorCode.INVALID_REQUEST
        assert "(N, 256)" in error.message
    np.testing.assert_allclose(answers[0], classifier.predict(good[0]), atol=ROW_ATOL)
    np.testing.assert_allclose(answers[-1], classifier.predict(good[1]), atol=ROW_ATOL)


def test_the_queue_is_bounded(make_onnx: MakeOnnx) -> None:
    classifier = _loaded(make_onnx)
    tensors = _tensors(classifier, 5)

    async def scenario() -> list[Any]:
        batcher = Batcher(classifier, window_s=0.2, max_batch=32, max_queue=2)
        answers = await asyncio.gather(*(batcher.predict(tensor) for tensor in tensors), return_exceptions=True)
        await batcher.close()
        return answers

    answers = _run(scenario())
    assert all(isinstance(answer, np.ndarray) for answer in answers[:2])
    for error in answers[2:]:
        assert isinstance(error, ServiceError)
        assert error.code is ErrorCode.MODEL_NOT_READY
        assert error.status == 503
        assert "at most 2" in error.message


def test_closing_tells_the_requests_still_waiting(make_onnx: MakeOnnx) -> None:
    classifier = _loaded(make_onnx)
    (tensor,) = _tensors(classifier, 1)

    async def scenario() -> BaseException | np.ndarray:
        batcher = Batcher(classifier, window_s=0.5, max_batch=32, max_queue=8)
        waiting = asyncio.ensure_future(batcher.predict(tensor))
        await asyncio.sleep(0.05)  # queued, inside its window
        await batcher.close()
        return (await asyncio.gather(waiting, return_exceptions=True))[0]

    error = _run(scenario())
    assert isinstance(error, ServiceError)
    assert error.code is ErrorCode.MODEL_NOT_READY


def test_predictor_without_batching_answers_the_same(make_onnx: MakeOnnx, sample_images: dict[str, bytes]) -> None:
    classifier = _loaded(make_onnx, version="23")
    images = list(sample_images.values())

    async def scenario(batching: bool) -> list[np.ndarray]:
        predictor = Runner(batching=batching, window_s=0.2, max_batch=32, max_queue=64)
        tensors = [classifier.preprocess([DecodedImage.decode(image)]) for image in images]
        answers = await asyncio.gather(*(predictor.predict(classifier, tensor) for tensor in tensors))
        await predictor.close()
        return answers

    runs_before, _ = _batch_series("snn", "23")
    unbatched = _run(scenario(False))
    runs_between, _ = _batch_series("snn", "23")
    batched = _run(scenario(True))
    runs_after, _ = _batch_series("snn", "23")
    assert runs_between - runs_before == len(images)  # one run per request
    assert runs_after - runs_between < len(images)
    for image, alone, together in zip(images, unbatched, batched, strict=True):
        expected = classifier.predict(classifier.preprocess([DecodedImage.decode(image)]))
        np.testing.assert_allclose(alone, expected, atol=ROW_ATOL)
        np.testing.assert_allclose(together, alone, atol=ROW_ATOL)
    with pytest.raises(ServiceError) as caught:
        _run(Runner(batching=False, window_s=0, max_batch=1, max_queue=1).predict(classifier, np.zeros((1, 3))))
    assert caught.value.code is ErrorCode.INVALID_REQUEST


# -- the real app ------------------------------------------------------------------------------------------


def _predict(client: Any, image: bytes) -> Any:
    return client.post("/v1/models/cnn/predict", files={"file": ("scan.jpg", image, "image/jpeg")})


def _probabilities(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([response.json()["probabilities"][name] for name in CLASS_NAMES])


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_predict_requests(
    model_zoo: Any, inference_app_client: Callable[..., Any], sample_images: dict[str, bytes], batching: bool
) -> None:
    """Through the real app: with batching, 8 concurrent requests take fewer runs than requests; without it,
    one run each; either way every request gets the answer for its own image."""
    version = model_zoo.default_version("cnn")
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, batching=batching, batch_window_ms=500)
    images = list(sample_images.values()) * 2
    expected = [model_zoo.version("cnn", version).expected_probabilities(image) for image in images]
    _probabilities(_predict(client, images[0]))  # loads the model, outside the measured window
    runs_before, images_before = _batch_series("cnn", version)

    with ThreadPoolExecutor(len(images)) as pool:
        responses = list(pool.map(lambda image: _predict(client, image), images))

    runs_after, images_after = _batch_series("cnn", version)
    assert images_after - images_before == len(images)
    if batching:
        assert runs_after - runs_before < len(images)
    else:
        assert runs_after - runs_before == len(images)
    for response, want in zip(responses, expected, strict=True):
        np.testing.assert_allclose(_probabilities(response), want, atol=1e-5)
        assert response.json()["version"] == version


def test_predict_pixels_runs_are_recorded(
    model_zoo: Any, inference_app_client: Callable[..., Any], sample_arrays: Callable[[int], Any]
) -> None:
    client = inference_app_client(tracking_uri=model_zoo.tracking_uri, pixel_run_batch=4)
    pixels = sample_arrays(32)[0][:10]
    runs_before, images_before = _batch_series("rf", "1")
    response = client.post(
        "/v1/models/rf/predict-pixels",
        content=pixels.tobytes(),
        headers={PIXELS_SHAPE_HEADER: "10,32,32", "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    runs_after, images_after = _batch_series("rf", "1")
    assert (runs_after - runs_before, images_after - images_before) == (3, 10)  # 4 + 4 + 2
