"""In-process part of the serving benchmark: native model against onnxruntime, per family.

`python -m benchmarks.serving_inprocess [--quick]` prints one JSON list. Each family is fitted on the
embedded sample with the project's own family class (its default parameters, few epochs: the speed of a
graph does not depend on how well it was trained, except the forest's, whose trees grow with the data),
converted to ONNX with its contract, and timed: the native model (Keras `predict()` and the direct call
the project uses, scikit-learn `predict_proba`) against the project's `OnnxClassifier`, on one image and
on a batch of 32. Run in a child process so that TensorFlow's threads are gone before the HTTP part starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.kit.schemas import MODEL_FAMILIES

BATCH = 32
# Few epochs: enough for a real fitted graph, cheap on 2 cores.
FIT_OVERRIDES: dict[str, dict[str, Any]] = {
    "cnn": {"epochs": 1},
    "snn": {"epochs": 1},
    "mobilenetv2": {"epochs": 1, "fine_tune_epochs": 1},
}


def p50_ms(call: Callable[[], object], repeats: int, seconds: float) -> float:
    """Median wall time of ``call`` over at most ``repeats`` runs or ``seconds``, after two warm-up runs."""
    call()
    call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def _sample() -> tuple[list[bytes], np.ndarray]:
    """The embedded sample's files (as a request carries them) and their class indices."""
    from shared.core.contract import CLASS_NAMES
    from shared.core.dataset import SAMPLE_DATA_DIR

    files = [path for name in CLASS_NAMES for path in sorted((SAMPLE_DATA_DIR / name).glob("*.jpg"))]
    return [path.read_bytes() for path in files], np.asarray([CLASS_NAMES.index(path.parent.name) for path in files])


def measure_family(name: str, raw: list[bytes], labels: np.ndarray, quick: bool) -> dict[str, Any]:
    from services.training.config import TrainingSettings
    from services.training.families import get_family
    from services.training.onnx_export import embed_contract, exported_classifier
    from services.training.search import NOT_MODEL_PARAMS
    from shared.core.imaging import decode_to_array

    family = get_family(name, TrainingSettings())
    params = {**family.default_params(), **FIT_OVERRIDES.get(name, {}), "seed": 0}
    size = int(params["image_size"])
    contract = family.contract(size)
    images = np.stack([decode_to_array(data, size) for data in raw])
    fit_params = {key: value for key, value in params.items() if key not in NOT_MODEL_PARAMS}
    started = time.perf_counter()
    fitted = family.fit(images, labels, fit_params, contract)
    fit_seconds = time.perf_counter() - started
    classifier = exported_classifier(embed_contract(family.to_onnx(fitted), contract, {"family": name}), 0)
    one, batch = family.tensor(images[:1], contract), family.tensor(images[np.arange(BATCH) % len(images)], contract)
    repeats, seconds = (30, 2.0) if quick else (100, 4.0)
    row: dict[str, Any] = {"family": name, "image_size": size, "fit_seconds": round(fit_seconds, 1)}
    native = fitted.native
    if hasattr(native, "predict_proba"):
        row["native_api"] = "scikit-learn predict_proba"
        row["native_1_ms"] = p50_ms(lambda: native.predict_proba(one), repeats, seconds)
        row["native_32_ms"] = p50_ms(lambda: native.predict_proba(batch), repeats, seconds)
    else:
        row["native_api"] = "Keras predict()"
        row["native_1_ms"] = p50_ms(lambda: native.predict(one, verbose=0), repeats, seconds)
        row["native_32_ms"] = p50_ms(lambda: native.predict(batch, verbose=0), repeats, seconds)
        # What training itself uses: the model called directly, without predict()'s per-call set-up.
        row["direct_1_ms"] = p50_ms(lambda: native(one, training=False), repeats, seconds)
        row["direct_32_ms"] = p50_ms(lambda: native(batch, training=False), repeats, seconds)
    row["ort_1_ms"] = p50_ms(lambda: classifier.predict(one), repeats, seconds)
    row["ort_32_ms"] = p50_ms(lambda: classifier.predict(batch), repeats, seconds)
    # Bytes in, probabilities out: decoding and the contract's preprocessing as a request pays them.
    row["ort_classify_ms"] = p50_ms(lambda: classifier.classify(raw[0]), repeats, seconds)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--families", default=",".join(MODEL_FAMILIES))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raw, labels = _sample()
    rows = []
    for name in args.families.split(","):
        try:
            rows.append(measure_family(name, raw, labels, args.quick))
        except Exception as exc:  # one family's failure leaves the others' rows
            rows.append({"family": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"[in-process] {name} done", file=sys.stderr, flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
