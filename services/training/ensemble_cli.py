"""`python -m services.training.ensemble_cli --data PATH --members rf=2,snn=1,cnn=1,mobilenetv2=1`

An ensemble of registered versions that did not all train in one run (e.g. a family retrained alone). Each
member's registered ONNX file, exactly as inference serves it (calibrated), scores the calibration slice and the
test split of the same data, split and seed as training; the weights are then fitted, the ensemble evaluated,
logged and registered as a training run does it (``services.training.ensemble.build_ensemble``), and promoted by
the same gate (``--promote`` asks for the move whatever the comparison). Every member
must have been evaluated on that test split (its ``test_files_sha256`` tag), or nothing is registered.

With ``--test-fraction 0`` the members are refit versions (``--refit-champions``), which have no test split: as a
refit run does, the ensemble keeps the champion ensemble's weights and points at its run for the test figures;
its temperature and prediction sets are fitted anew on the calibration slice. The members must be the champion's
families (nothing is registered otherwise: weights never tested would be). A refit becomes the champion only with
``--promote``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from services.training import tracking
from services.training.calibration import CalibrationSlice, carve_calibration_slice
from services.training.config import TrainingSettings
from services.training.data import PreparedData, prepare_data
from services.training.ensemble import build_ensemble, recipe_applies
from services.training.recipe import champion_ensemble_weights
from services.training.registration import Candidate, promote_run, standing_on_test_split
from shared.core.onnx_classifier import OnnxClassifier
from shared.kit.schemas import ENSEMBLE_MODEL, registered_name

BATCH = 64


def _served_classifier(family: str, version: str, folder: Path) -> OnnxClassifier:
    local = Path(download_artifacts(f"models:/{registered_name(family)}/{version}", dst_path=str(folder)))
    classifier = OnnxClassifier(family, version, local if local.is_file() else next(local.rglob("*.onnx")))
    classifier.load()
    return classifier


def member_rows(
    members: dict[str, str], data: PreparedData, calibration_slice: CalibrationSlice
) -> list[dict[str, Any]]:
    """Each member's calibrated probabilities on the calibration slice and the test split, as build_ensemble
    reads them; ValueError when a member was evaluated on another test split."""
    client = MlflowClient()
    rows = []
    for family, version in members.items():
        split = client.get_model_version(registered_name(family), version).tags.get("test_files_sha256")
        if split != data.info["test_files_sha256"]:
            raise ValueError(f"{registered_name(family)} version {version} was evaluated on another test split")
        with tempfile.TemporaryDirectory() as folder:
            classifier = _served_classifier(family, version, Path(folder))
            size = classifier.contract.image_size
            rows.append({
                "family": family, "version": version,
                "calibration_probabilities": classifier.predict_pixels(calibration_slice.pixels(size), BATCH),
                "test_probabilities": classifier.predict_pixels(data.test(size), BATCH),
            })  # fmt: skip
    return rows


def _members(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {family.strip(): version.strip() for family, version in pairs}


def main(argv: list[str] | None = None) -> int:
    program, description = "python -m services.training.ensemble_cli", __doc__.split("\n\n")[1]
    parser = argparse.ArgumentParser(prog=program, description=description)
    parser.add_argument("--data", type=Path, required=True, help="the folder the members were trained on")
    parser.add_argument("--members", required=True, help="family=version pairs, e.g. rf=2,cnn=1,mobilenetv2=1")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="the members' run's test fraction (0: refit versions)"
    )
    parser.add_argument("--seed", type=int, default=42, help="the members' run's seed")
    parser.add_argument("--tracking-uri", help="MLflow (default: BT_TRAINING_TRACKING_URI, else MLFLOW_TRACKING_URI)")
    parser.add_argument("--cache-dir", type=Path, help="cache for decoded images (default: BT_TRAINING_CACHE_DIR)")
    parser.add_argument(
        "--promote", action="store_true", help="make it the ensemble's champion even where it does not beat it"
    )
    args = parser.parse_args(argv)
    overrides = {"tracking_uri": args.tracking_uri, "cache_dir": args.cache_dir}
    settings = TrainingSettings(**{key: value for key, value in overrides.items() if value is not None})
    tracking.use_tracking(settings.tracking_uri, settings.experiment)
    data = prepare_data(args.data, args.test_fraction, args.seed, settings.cache_dir)
    data, calibration_slice = carve_calibration_slice(data, args.seed)
    try:
        rows = member_rows(_members(args.members), data, calibration_slice)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = data.info["test_files_sha256"]
    recipe = champion_ensemble_weights() if args.test_fraction == 0 else None
    if args.test_fraction == 0 and not recipe_applies(recipe, {row["family"] for row in rows}):
        champion = "no ensemble champion" if recipe is None else f"the ensemble champion weighs {sorted(recipe[0])}"
        print(f"error: a refit keeps the champion's weights, and {champion}: give its families", file=sys.stderr)
        return 2
    ensemble = build_ensemble(rows, calibration_slice.labels, data.test_labels, split, register=True, recipe=recipe)
    if ensemble is None:
        print("error: an ensemble needs two members at least", file=sys.stderr)
        return 2
    candidate = Candidate(
        registered_name(ENSEMBLE_MODEL), str(ensemble["version"]), standing_on_test_split(split, ensemble["metrics"])
    )
    promotion = promote_run([candidate], explicit=args.promote)[0]
    shown = {key: ensemble[key] for key in ("version", "run_id", "params", "metrics")}
    print(json.dumps({**shown, "promotion": promotion.model_dump()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
