"""Command line: train in the foreground with a progress display.

bt-train (or python -m services.training.cli) --data PATH [--families rf,cnn] [--search quick] [--max-trials N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from services.training.config import TrainingSettings
from services.training.options import FamilyProgress, FamilyState, Registration, TrainingOptions
from shared.kit.errors import ServiceError
from shared.kit.schemas import MODEL_FAMILIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="image folder (default: BT_TRAINING_DATA_DIR or the embedded sample)")
    families = ",".join(MODEL_FAMILIES)
    parser.add_argument("--families", default=families, help=f"comma-separated, some of {families}")
    parser.add_argument("--search", choices=["none", "quick", "seed"], default="quick")
    parser.add_argument("--max-trials", type=int)
    parser.add_argument("--image-size", type=int, help="input size for every family (default: each family's own)")
    parser.add_argument("--epochs", type=int, help="override the epochs of the Keras families")
    parser.add_argument(
        "--test-fraction",
        type=float,
        help="test share without a Testing/ folder, one of 1/k folds (default 0.2; 0 with --refit-champions)",
    )
    parser.add_argument(
        "--refit-champions",
        action="store_true",
        help="refit each family's champion parameters (and the ensemble's weights) on every image: no search, "
        "no test split unless --test-fraction is given",
    )
    parser.add_argument(
        "--promote",
        action="store_true",
        help="make this run's versions the champions even where they do not beat them on the same test split",
    )
    parser.add_argument(
        "--guard", action="store_true", help="also fit and register a guard against non-MRI input on these images"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-register", action="store_true", help="log to MLflow but do not register versions")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: BT_TRAINING_TRACKING_URI, else MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="MobileNetV2 no-top .h5 (default: BT_TRAINING_MOBILENETV2_WEIGHTS, else BT_MOBILENETV2_WEIGHTS)",
    )
    parser.add_argument("--cache-dir", type=Path, help="cache for decoded images (default: BT_TRAINING_CACHE_DIR)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of every family trained, e.g. --set fine_tune_blocks=2 (JSON values)",
    )
    parser.add_argument("--backend", choices=["local", "dask"], default="local", help="where search trials run")
    parser.add_argument("--scheduler", help="Dask scheduler address for --backend dask, e.g. tcp://127.0.0.1:8786")
    parser.add_argument("--jobs", type=int, default=1, help="local worker processes for search trials")
    parser.add_argument("--report-dir", type=Path, help="where the comparison report goes (default: reports/)")
    parser.add_argument("--json", action="store_true", help="print the final per-family results as JSON")
    return parser


def parse_override(item: str) -> tuple[str, object]:
    """`KEY=VALUE` with a JSON value (a plain string when it is not JSON)."""
    key, _, text = item.partition("=")
    try:
        return key.strip(), json.loads(text)
    except json.JSONDecodeError:
        return key.strip(), text


def _test_fraction(args: argparse.Namespace) -> float:
    if args.test_fraction is not None:
        return float(args.test_fraction)
    return 0.0 if args.refit_champions else 0.2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = {
        key: value
        for key, value in {
            "tracking_uri": args.tracking_uri,
            "mobilenetv2_weights": args.weights,
            "cache_dir": args.cache_dir,
            "report_dir": args.report_dir,
        }.items()
        if value is not None
    }
    try:
        settings = TrainingSettings(**overrides)
        options = TrainingOptions(
            data_dir=args.data,
            families=[name.strip() for name in args.families.split(",") if name.strip()],
            search="none" if args.refit_champions else args.search,
            max_trials=args.max_trials,
            image_size=args.image_size,
            epochs=args.epochs,
            test_fraction=_test_fraction(args),
            refit_champions=args.refit_champions,
            promote=args.promote,
            fit_guard=args.guard,
            seed=args.seed,
            register_models=not args.no_register,
            backend=args.backend,
            scheduler=args.scheduler,
            jobs=args.jobs,
            overrides=dict(parse_override(item) for item in args.overrides),
        )
    except ValidationError as exc:
        print(f"invalid arguments: {exc}", file=sys.stderr)
        return 2

    from services.training.pipeline import run_training  # TensorFlow loads only now

    started = time.perf_counter()

    def show(progress: FamilyProgress | Registration) -> None:
        elapsed = time.perf_counter() - started
        if isinstance(progress, Registration):
            moved = "champion" if progress.champion else "registered, not champion"
            print(f"[{elapsed:7.1f}s] {progress.registered_name} v{progress.version}: {moved} ({progress.reason})")
            return
        line = f"[{elapsed:7.1f}s] {progress.family:<12} {progress.state.value:<8} {progress.step}"
        if progress.state is FamilyState.DONE:
            accuracy = progress.metrics.get("test_accuracy")
            line += f"  test accuracy {accuracy:.4f}" if accuracy is not None else ""
            if progress.registered_version:
                line += f"  -> {progress.registered_name} v{progress.registered_version}"
        if progress.error:
            line += f"  ERROR {progress.error}"
        print(line, flush=True)

    try:
        results = run_training(options, settings, show)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([result.model_dump(mode="json") for result in results], indent=2))
    return 0 if all(result.state is FamilyState.DONE for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
