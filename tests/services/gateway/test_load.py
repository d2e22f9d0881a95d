"""The gateway under load (real processes): 2,000 predictions at concurrency 32, not one error. The figures
(throughput, p50, p99) come from `python -m benchmarks.gateway_load` (docs/benchmarks.md), not from here."""

from __future__ import annotations

from typing import Any

from benchmarks.gateway_load import run_stream, sample_images


def test_2000_predictions_at_concurrency_32_without_an_error(ready_inference: Any, start_gateway: Any) -> None:
    gateway = start_gateway(inference_url=ready_inference.url)
    result = run_stream(gateway.url, sample_images(), 2000, 32, model="rf")
    assert (result.sent, result.errors) == (2000, 0), (result.answers, result.failures)
