"""Prometheus series of the inference service, beyond the per-route HTTP series every service has.

Labelled by model and version, so a dashboard can tell a slow model from a slow service.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.core.onnx_classifier import RunObserver

# Sub-millisecond to a few seconds: one CNN image takes about 2 ms, a large batch can take seconds.
_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

ONNX_RUN_SECONDS = Histogram(
    "bt_inference_onnx_run_seconds",
    "Time of one onnxruntime run.",
    ["model", "version"],
    buckets=_SECONDS_BUCKETS,
)
BATCH_SIZE = Histogram(
    "bt_inference_batch_size",
    "Images in one onnxruntime run.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_WAIT_SECONDS = Histogram(
    "bt_inference_queue_wait_seconds",
    "Time a request waited for its batch to run.",
    ["model", "version"],
    buckets=_SECONDS_BUCKETS,
)
MODEL_LOADS = Counter(
    "bt_inference_model_loads_total",
    "Model versions loaded, by outcome (ok, failed).",
    ["model", "version", "outcome"],
)


def run_recorder(model: str, version: str) -> RunObserver:
    """An ``OnnxClassifier`` ``on_run`` observer that records one version's runs (series looked up once)."""
    seconds = ONNX_RUN_SECONDS.labels(model, version)
    sizes = BATCH_SIZE.labels(model, version)

    def record(images: int, elapsed_s: float) -> None:
        seconds.observe(elapsed_s)
        sizes.observe(images)

    return record
