"""The guard's two rates: real test-split scans refused (target at most 1%) and non-MRI images refused (target at
least 95%), written to docs/benchmarks.md.

The guard is fitted exactly as the training pipeline fits it: on the training images less the calibration slice,
its threshold from the calibration slice (same split, groups and seed as training); the test split and the
non-MRI set (benchmarks/ood_sets.py) are never fitted on.

    python -m benchmarks.ood_guard --data ../shared/data/brain-tumor-mri/Training

With ``--guard-file PATH`` (e.g. the pretrained bundle's ``guard.onnx``) that served guard is scored on the
non-MRI set instead, as inference scores uploads. Its real-scan rate is not reported: a guard refit on every
image has seen the test split, so that figure is its recipe's, from the command above.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.markdown import command_line, write_section
from benchmarks.ood_sets import OTHER_MODALITY_PREFIX, ood_images, source_of
from services.training.calibration import carve_calibration_slice
from services.training.data import prepare_data
from services.training.ood_guard import (
    GUARD_COMPONENTS,
    GUARD_IMAGE_SIZE,
    GUARD_QUANTILE,
    OodGuard,
    files_input,
    fit_guard,
    guard_onnx,
    guard_scores,
)
from services.training.options import TrainingOptions
from shared.core.guard_input import FEATURE_NAMES, GUARD_FEATURES_INPUT_NAME, GuardInput, guard_input
from shared.kit.schemas import GUARD_INPUT_NAME

# Every n-th test-split scan is also uploaded re-encoded (a real scan must not be refused for its file format).
REENCODED_EVERY = 6
# Images timed one by one for the cost per image (decode + features, then the ONNX graph on one thread).
TIMED_IMAGES = 200


def _table(rows: list[tuple[str, int, int]]) -> str:
    lines = ["| set | images | refused | rate |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {total} | {refused} | {refused / max(total, 1):.1%} |" for name, total, refused in rows]
    return "\n".join(lines)


def run(data_dir: Path, cache_dir: Path, argv: list[str] | None) -> str:
    options = TrainingOptions()
    started = time.perf_counter()
    data = prepare_data(data_dir, options.test_fraction, options.seed, cache_dir)
    data, calibration_slice = carve_calibration_slice(data, options.seed)
    size = GUARD_IMAGE_SIZE
    fit = files_input(data.train_files.paths, data.train(size))
    held_out = files_input(calibration_slice.files.paths, calibration_slice.pixels(size))
    guard = fit_guard(fit, held_out, seed=options.seed)
    test_scores = guard_scores(guard, files_input(data.test_files.paths, data.test(size)))
    items = ood_images()
    ood_scores = guard_scores(guard, _stacked([guard_input(data_bytes) for _, data_bytes in items]))
    uploads = [path.read_bytes() for path in data.test_files.paths[: TIMED_IMAGES // 2]]
    uploads += [data_bytes for _, data_bytes in items[: TIMED_IMAGES // 2]]
    cost = _cost_per_image(guard, uploads)
    by_source: dict[str, list[bool]] = defaultdict(list)
    for (name, _), score in zip(items, ood_scores, strict=True):
        by_source[source_of(name)].append(bool(score > guard.threshold))
    test_refused = int((test_scores > guard.threshold).sum())
    original = np.array([not name.startswith(OTHER_MODALITY_PREFIX) for name, _ in items])
    refused = ood_scores > guard.threshold
    ood_count, ood_refused = int(original.sum()), int(refused[original].sum())
    rows = [("real test-split MRI scans (target <= 1%)", len(test_scores), test_refused),
            ("non-MRI set, the original images (target >= 95%)", ood_count, ood_refused),
            ("non-MRI set with the other modalities (DICOM)", len(items), int(refused.sum()))]  # fmt: skip
    rows += _reencoded_rows(guard, data.test_files.paths[::REENCODED_EVERY])
    rows += [(f"non-MRI: {source}", len(flags), sum(flags)) for source, flags in sorted(by_source.items())]
    return (
        f"## Guard against non-MRI input (`{command_line('benchmarks.ood_guard', argv)}`)\n\n"
        f"A mixture of {len(guard.mixture_means)} Gaussians over the log PCA distances of "
        f"{GUARD_IMAGE_SIZE}x{GUARD_IMAGE_SIZE} thumbnails "
        f"({GUARD_COMPONENTS} components) and the statistics {', '.join(FEATURE_NAMES)}, fitted on "
        f"{guard.fitted_images} training images; threshold {guard.threshold:.3f} = quantile {GUARD_QUANTILE} of "
        f"{guard.threshold_images} calibration-slice scores; {time.perf_counter() - started:.0f} s in all. "
        f"Cost per upload on one thread (median of {len(uploads)}: half test-split JPEGs, half non-MRI PNGs): "
        f"{cost[0]:.2f} ms decoding and features, {cost[1]:.3f} ms the ONNX graph. See docs/ood-guard.md.\n\n"
        + _table(rows) + "\n\n" + _verdict(len(test_scores), test_refused, ood_count, ood_refused)
    )


def run_file(guard_file: Path, argv: list[str] | None) -> str:
    """The non-MRI rows for a served guard file, scored by inference's own code."""
    from services.inference.guard import Guard
    from shared.core.imaging import DecodedImage

    guard = Guard("file", guard_file)
    guard.load()
    items = ood_images()
    scores = [guard.predict(guard.preprocess([DecodedImage.decode(data_bytes)]))[0, 0] for _, data_bytes in items]
    refused = np.array(scores) > guard.threshold
    original = np.array([not name.startswith(OTHER_MODALITY_PREFIX) for name, _ in items])
    rows = [("non-MRI set, the original images (target >= 95%)", int(original.sum()), int(refused[original].sum())),
            ("non-MRI set with the other modalities (DICOM)", len(items), int(refused.sum()))]  # fmt: skip
    return (
        f"## The served guard on the non-MRI set (`{command_line('benchmarks.ood_guard', argv)}`)\n\n"
        f"`{guard_file.name}` (threshold {guard.threshold:.3f}), scored as inference scores an upload. Its rate on "
        "real scans is its recipe's (the section above): refit on every image, it has seen the test split.\n\n"
        + _table(rows)
    )


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# How a real scan may reach the service other than as the dataset's JPEG.
REENCODINGS: dict[str, Callable[[Image.Image], bytes]] = {
    "PNG": lambda image: _encoded(image, "PNG"),
    "JPEG quality 60": lambda image: _encoded(image.convert("RGB"), "JPEG", quality=60),
    "gray PNG at 256 px": lambda image: _encoded(image.convert("L").resize((256, 256)), "PNG"),
    "RGB JPEG at 1024 px": lambda image: _encoded(image.convert("RGB").resize((1024, 1024)), "JPEG", quality=90),
    "mirrored PNG": lambda image: _encoded(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
}


def _reencoded_rows(guard: OodGuard, paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """Real test-split scans refused when uploaded re-encoded, per encoding."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            images.append(image)
    rows = []
    for name, encode in REENCODINGS.items():
        scores = guard_scores(guard, _stacked([guard_input(encode(image)) for image in images]))
        rows.append((f"real test-split scans re-encoded: {name}", len(images), int((scores > guard.threshold).sum())))
    return rows


def _stacked(inputs: list[GuardInput]) -> GuardInput:
    return GuardInput(np.concatenate([i.pixels for i in inputs]), np.concatenate([i.features for i in inputs]))


def _cost_per_image(guard: OodGuard, uploads: list[bytes]) -> tuple[float, float]:
    """Median milliseconds per upload: its guard input from the bytes, then the ONNX graph (one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(guard_onnx(guard), options, providers=["CPUExecutionProvider"])
    decode_ms, graph_ms = [], []
    for upload in uploads:
        started = time.perf_counter()
        inputs = guard_input(upload)
        decoded = time.perf_counter()
        session.run(None, {GUARD_INPUT_NAME: inputs.pixels, GUARD_FEATURES_INPUT_NAME: inputs.features})
        decode_ms.append((decoded - started) * 1000)
        graph_ms.append((time.perf_counter() - decoded) * 1000)
    return float(np.median(decode_ms)), float(np.median(graph_ms))


def _verdict(tests: int, test_refused: int, oods: int, ood_refused: int) -> str:
    real = "met" if test_refused <= 0.01 * tests else "NOT met"
    other = "met" if ood_refused >= 0.95 * oods else "NOT met"
    return f"Targets: at most 1% of real scans refused: {real}; at least 95% of non-MRI images refused: {other}."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="The dataset folder (class sub-folders); fits a guard on it.")
    parser.add_argument("--guard-file", type=Path, help="Score this served guard ONNX file on the non-MRI set.")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Decoded-image cache (default: a temp folder).")
    parser.add_argument("--no-write", action="store_true", help="Print only; leave docs/benchmarks.md alone.")
    args = parser.parse_args(argv)
    if (args.data is None) == (args.guard_file is None):
        parser.error("give --data (fit and score a guard) or --guard-file (score a served one)")
    if args.guard_file is not None:
        key, section = "ood-guard-served", run_file(args.guard_file, argv)
    else:
        cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="ood-guard-"))
        key, section = "ood-guard", run(args.data, cache_dir, argv)
    print(section)  # noqa: T201 - a command-line report
    if not args.no_write:
        write_section(key, section)


if __name__ == "__main__":
    main()
