"""`python -m deploy.pretrained COMMAND`: the pretrained bundle and an MLflow registry.

- ``register``: verify the bundle (shared/pretrained_bundle/, checksums from its manifest) and register each ONNX
  file as an MLflow Model version, as training does (services.training.tracking: the logged file is checked back
  against its sha256), with the manifest's metrics, params and tags, an ``onnx_sha256`` tag, the
  ``pretrained_on`` label, and the ``champion`` alias; then the ensemble (its members pinned to the new versions).
- ``build``: write a bundle from a finished full-data run's registered versions (the ``champion`` of each family
  in ``--from-registry URI``, or ``--versions rf=3,cnn=2``), the ensemble's and the guard's champions. A version
  refit from a recipe (``bt-train --refit-champions``) carries its figures from the recipe's run: the test split.
- ``train-command``: print the runs a bundle is built from (evaluate on a split, MobileNetV2 whole, the ensemble,
  refit on every image).
- ``refit-guard``: replace the bundle's guard by one fitted on every image; ``update-ensemble``: replace its
  ensemble by a registry's ensemble champion over the bundled versions (after a change of training's rule).

Imports only MLflow, onnx, numpy and Pillow (services.training.tracking and .ood_guard; no TensorFlow, scikit-learn only
to fit a guard, never here), so it runs from the
serving install too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from deploy.bundle import (
    BUNDLE_DIR,
    GUARD_KEY,
    BundledEnsemble,
    BundledGuard,
    BundledModel,
    BundleError,
    DataProvenance,
    Manifest,
    file_sha256,
    load_bundle,
    load_manifest,
    write_bundle,
)
from deploy.processes import PROJECT_ROOT
from services.training.registration import Candidate
from shared.core.ensemble_spec import WEIGHTS_TAG, EnsembleSpec, SpecError
from shared.kit.schemas import (
    CHAMPION_ALIAS,
    ENSEMBLE_MODEL,
    GUARD_REGISTERED_NAME,
    MODEL_FAMILIES,
    PRETRAINED_TAG,
    RECIPE_RUN_TAG,
    registered_name,
)

EXPERIMENT = "pretrained-bundle"
FULL_DATA = "../shared/data/brain-tumor-mri/Training"
# The full-data runs a bundle is built from, against one MLflow (the registry the bundle is then built from): the
# quick search evaluated on a 20% duplicate-aware test split, then each champion's recipe refit on every image
# (less the calibration slice). Both with the forest at 100 trees instead of 300, which keeps the bundle under
# 40 MB for 0.35 point of the forest's accuracy (docs/pretrained.md), so the evaluation scores what is bundled.
BUNDLED_FOREST = "--set n_estimators=100"
TRAIN_COMMAND = (
    f".venv/bin/python -m services.training.cli --data {FULL_DATA} --search quick --test-fraction 0.2 {BUNDLED_FOREST}"
)
# MobileNetV2 trained whole at 224 px beats the quick search's frozen-base recipe (docs/pretrained.md); on a fresh
# MLflow it becomes version 2, and the ensemble is fitted again over it.
MOBILENETV2_WHOLE_COMMAND = (
    f".venv/bin/python -m services.training.cli --data {FULL_DATA} --families mobilenetv2 --search quick "
    "--set fine_tune_blocks=16 --set image_size=224 --set fine_tune_epochs=6 --set augment=flip_noise"
)
ENSEMBLE_COMMAND = (
    f".venv/bin/python -m services.training.ensemble_cli --data {FULL_DATA} --members rf=1,snn=1,cnn=1,mobilenetv2=2"
)
# A refit has no test split of its own: its versions (and the guard it fits) become champions only when asked.
REFIT_COMMAND = (
    f".venv/bin/python -m services.training.cli --data {FULL_DATA} --refit-champions --promote --guard {BUNDLED_FOREST}"
)
# Every run a bundle is built from, in order, against one MLflow (MobileNetV2 needs BT_MOBILENETV2_WEIGHTS).
TRAIN_STEPS = (TRAIN_COMMAND, MOBILENETV2_WHOLE_COMMAND, ENSEMBLE_COMMAND, REFIT_COMMAND)
# The budget for all the bundle's files: the repository stays cloneable.
MAX_BUNDLE_BYTES = 40_000_000
# Registered-version tags copied into the bundle (the rest are run-specific).
KEPT_TAGS = ("image_size", "test_files_sha256")


def register(tracking_uri: str, folder: Path = BUNDLE_DIR) -> dict[str, str]:
    """Register every model of the bundle in folder (checksums verified first) and make each the champion: the
    launcher registers a bundle only into a registry that has none of its families, so the promotion is explicit.
    Returns short name -> version."""
    import mlflow

    from services.training import tracking
    from services.training.registration import promote_run

    manifest, files = load_bundle(folder)
    previous_uri = mlflow.get_tracking_uri()
    tracking.use_tracking(tracking_uri, EXPERIMENT)
    try:
        candidates = [_register_model(manifest, model, files[model.model]) for model in manifest.models]
        versions = {model.model: c.version for model, c in zip(manifest.models, candidates, strict=True)}
        if manifest.ensemble is not None and set(manifest.ensemble.weights) <= set(versions):
            candidates.append(_register_ensemble(manifest, manifest.ensemble, versions))
            versions[ENSEMBLE_MODEL] = candidates[-1].version
        if manifest.guard is not None:
            candidates.append(_register_guard(manifest, files[GUARD_KEY]))
            versions[GUARD_KEY] = candidates[-1].version
        promote_run(candidates, explicit=True)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return versions


def _register_model(manifest: Manifest, model: BundledModel, data: bytes) -> Candidate:
    import mlflow

    from services.training import registration, tracking

    with mlflow.start_run(run_name=f"{model.model}-pretrained"):
        mlflow.set_tags({"family": model.model, "stage": "pretrained", "bundle_commit": manifest.commit})
        tracking.log_params(model.params)
        mlflow.log_metrics(model.test_metrics)
        tracking.log_bytes(manifest.model_dump_json(indent=2).encode(), "pretrained/manifest.json")
        tracking.log_onnx(data)
        logged = tracking.log_onnx_model(data, name=model.model)
        version = registration.register(
            model.registered_name,
            registration.LoggedFile.of_model(logged),
            data,
            description=f"{model.model} pretrained on {manifest.label()}",
            tags={**model.tags, "family": model.model, PRETRAINED_TAG: manifest.label()},
        )
    return Candidate(model.registered_name, version, None)


def _register_guard(manifest: Manifest, data: bytes) -> Candidate:
    """The guard's version, registered as training registers a fitted one (services.training.guard_registration)."""
    import mlflow

    from services.training.guard_registration import register_guard_file

    with mlflow.start_run(run_name="guard-pretrained"):
        mlflow.set_tags({"family": "guard", "stage": "pretrained", "bundle_commit": manifest.commit})
        tags = {PRETRAINED_TAG: manifest.label()}
        return register_guard_file(data, f"guard pretrained on {manifest.label()}", tags, manifest.data.fingerprint)


def _register_ensemble(manifest: Manifest, ensemble: BundledEnsemble, versions: dict[str, str]) -> Candidate:
    """The ensemble's version: its members pinned to the versions just registered (inference reads the tags)."""
    import mlflow

    from services.training.ensemble_registration import log_spec, register_spec

    members = {family: versions[family] for family in ensemble.weights}
    spec = EnsembleSpec(members, ensemble.weights, ensemble.conformal, ensemble.temperature)
    split = next((m.tags["test_files_sha256"] for m in manifest.models if "test_files_sha256" in m.tags), "")
    with mlflow.start_run(run_name=f"{ENSEMBLE_MODEL}-pretrained") as run:
        mlflow.set_tags({"family": ENSEMBLE_MODEL, "stage": "pretrained"})
        mlflow.log_metrics(ensemble.test_metrics)
        tags = {PRETRAINED_TAG: manifest.label()}
        version = register_spec(log_spec(spec), spec, split, run.info.run_id, "(pretrained)", tags)
    return Candidate(ensemble.registered_name, version, None)


def build(
    tracking_uri: str,
    folder: Path,
    data: DataProvenance,
    command: str = TRAIN_COMMAND,
    versions: dict[str, str] | None = None,
    max_bytes: int = MAX_BUNDLE_BYTES,
    keep_guard: bool = False,
) -> Manifest:
    """Write a bundle in folder from the registry's versions (each family's champion unless ``versions`` names one).
    ``keep_guard``: keep the folder's own guard (fitted apart, by ``refit-guard``) instead of the registry's."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    models: list[BundledModel] = []
    files: dict[str, bytes] = {}
    commit = ""
    for family in MODEL_FAMILIES:
        name = registered_name(family)
        version = _pick_version(client, name, (versions or {}).get(family))
        if version is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = _download(f"models:/{name}/{version.version}", Path(tmp), tracking_uri)
            onnx_file = local if local.is_file() else next(local.rglob("*.onnx"))
            files[family] = onnx_file.read_bytes()
        expected = version.tags.get("onnx_sha256")
        if expected and expected != file_sha256(files[family]):
            raise BundleError(f"{name} version {version.version}: the downloaded file does not match its onnx_sha256")
        run = client.get_run(version.run_id) if version.run_id else None
        commit = commit or (run.data.tags.get("mlflow.source.git.commit", "") if run else "")
        models.append(
            BundledModel(
                model=family,
                registered_name=name,
                file=f"{family}.onnx",
                sha256="0" * 64,  # filled from the bytes by write_bundle
                size_bytes=1,
                test_metrics=_test_metrics(client, version),
                params=dict(run.data.params) if run else {},
                tags={key: version.tags[key] for key in KEPT_TAGS if key in version.tags},
                source_version=str(version.version),
            )
        )
    if not models:
        raise BundleError(f"no registered model with a {CHAMPION_ALIAS!r} alias at {tracking_uri}")
    total = sum(len(data) for data in files.values())
    if total > max_bytes:
        sizes = ", ".join(f"{family} {len(data) / 1e6:.1f} MB" for family, data in files.items())
        raise BundleError(
            f"the bundle would be {total / 1e6:.1f} MB ({sizes}), over {max_bytes / 1e6:.0f} MB: bundle a smaller "
            "forest (e.g. 150 trees, see docs/pretrained.md) with --versions; nothing was written"
        )
    if not data.fingerprint:  # the evaluation split's files, as training tags every version
        fingerprint = next((m.tags["test_files_sha256"] for m in models if "test_files_sha256" in m.tags), "unknown")
        data = data.model_copy(update={"fingerprint": fingerprint})
    guard, guard_bytes = _kept_guard(folder) if keep_guard else _bundled_guard(client, tracking_uri)
    manifest = Manifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=commit or _git_commit(),
        command=command,
        data=data,
        models=models,
        ensemble=_bundled_ensemble(client, {m.model for m in models}),
        guard=guard,
    )
    return write_bundle(folder, manifest, {**files, **({GUARD_KEY: guard_bytes} if guard_bytes else {})})


def _test_metrics(client: object, version: object) -> dict[str, float]:
    """The version's test-split figures: its own run's; for a refit without a test split, its recipe's run's."""
    for run_id in (version.run_id, version.tags.get(RECIPE_RUN_TAG)):  # type: ignore[attr-defined]
        metrics = client.get_run(run_id).data.metrics if run_id else {}  # type: ignore[attr-defined]
        if "test_accuracy" in metrics:
            return {key: value for key, value in metrics.items() if key.startswith("test_")}
    return {}


def _kept_guard(folder: Path) -> tuple[BundledGuard, bytes]:
    """The folder's bundled guard and its bytes (checked against the manifest); BundleError when it has none."""
    manifest, files = load_bundle(folder)
    if manifest.guard is None:
        raise BundleError(f"{folder} has no guard to keep: nothing was written")
    return manifest.guard, files[GUARD_KEY]


def _bundled_guard(client: object, tracking_uri: str) -> tuple[BundledGuard | None, bytes]:
    """The guard's champion and its bytes (checked against its sha256 tag), or (None, b"") when there is none."""
    version = _pick_version(client, GUARD_REGISTERED_NAME, None)
    if version is None:
        return None, b""
    with tempfile.TemporaryDirectory() as tmp:
        local = _download(f"models:/{GUARD_REGISTERED_NAME}/{version.version}", Path(tmp), tracking_uri)  # type: ignore[attr-defined]
        data = (local if local.is_file() else next(local.rglob("*.onnx"))).read_bytes()
    expected = version.tags.get("onnx_sha256")  # type: ignore[attr-defined]
    if expected and expected != file_sha256(data):
        raise BundleError(f"{GUARD_REGISTERED_NAME} version {version.version}: the download does not match its sha256")  # type: ignore[attr-defined]
    guard = BundledGuard(
        registered_name=GUARD_REGISTERED_NAME, file="guard.onnx", sha256="0" * 64, size_bytes=1,
        source_version=str(version.version),  # type: ignore[attr-defined]
    )  # fmt: skip
    return guard, data


def _download(model_uri: str, folder: Path, tracking_uri: str) -> Path:
    """Download a models:/ URI. MLflow resolves those through the process-wide tracking URI (the registry follows
    it unless set apart, which this code never does: set_registry_uri would leak into the environment)."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return Path(download_artifacts(model_uri, dst_path=str(folder)))
    finally:
        mlflow.set_tracking_uri(previous)


def _pick_version(client: object, name: str, wanted: str | None) -> object | None:
    from mlflow.exceptions import MlflowException

    try:
        if wanted:
            return client.get_model_version(name, wanted)  # type: ignore[attr-defined]
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)  # type: ignore[attr-defined]
    except MlflowException:
        return None


def _bundled_ensemble(client: object, families: set[str]) -> BundledEnsemble | None:
    """The registry's ensemble champion as weights over the bundled families (its members must all be bundled)."""
    version = _pick_version(client, registered_name(ENSEMBLE_MODEL), None)
    return None if version is None else _ensemble_entry(client, version, families)


def _ensemble_entry(
    client: object, version: object, families: set[str], command: str | None = None
) -> BundledEnsemble | None:
    """An ensemble version as the manifest's entry, or None when it weighs a family that is not bundled."""
    weights = {str(k): float(v) for k, v in json.loads(version.tags.get(WEIGHTS_TAG, "{}")).items()}  # type: ignore[attr-defined]
    if not weights or not set(weights) <= families:
        return None
    spec = EnsembleSpec.from_tags(version.tags)  # type: ignore[attr-defined]
    return BundledEnsemble(
        registered_name=registered_name(ENSEMBLE_MODEL), weights=weights, test_metrics=_test_metrics(client, version),
        conformal=spec.conformal, temperature=spec.temperature, command=command,
    )  # fmt: skip


def update_ensemble(tracking_uri: str, runs: str, folder: Path = BUNDLE_DIR) -> BundledEnsemble:
    """Replace the bundle's ensemble by the registry's ensemble champion, as ``build`` takes it, when each of its
    members is a bundled file (the version it was built from, with the same sha256); the models and the guard are
    left alone. For a change of training's ensemble rule after the bundle was built: ``runs`` are the ensemble_cli
    commands that registered the new champion (the rule on the evaluation's members, then a refit over the bundled
    ones), recorded with it."""
    from mlflow import MlflowClient

    manifest, files = load_bundle(folder)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = registered_name(ENSEMBLE_MODEL)
    version = _pick_version(client, name, None)
    if version is None:
        raise BundleError(f"no {name} version with a {CHAMPION_ALIAS!r} alias at {tracking_uri}")
    try:
        members = EnsembleSpec.from_tags(version.tags).members  # type: ignore[attr-defined]
    except SpecError as exc:
        raise BundleError(f"{name} version {version.version}: {exc}") from exc  # type: ignore[attr-defined]
    bundled = {model.model: model for model in manifest.models}
    for family, pinned in members.items():
        model = bundled.get(family)
        found = _pick_version(client, registered_name(family), pinned) if model else None
        if model is None or model.source_version != pinned or found is None or _sha256_tag(found) != model.sha256:
            raise BundleError(
                f"the ensemble champion's {family} version {pinned} is not the bundled file: nothing was written"
            )
    ensemble = _ensemble_entry(client, version, set(bundled), " && ".join((runs, UPDATE_ENSEMBLE_COMMAND)))
    if ensemble is None or not ensemble.test_metrics:
        raise BundleError(f"{name} version {version.version} has no test figures: nothing was written")  # type: ignore[attr-defined]
    return write_bundle(folder, manifest.model_copy(update={"ensemble": ensemble}), files).ensemble or ensemble


def _sha256_tag(version: object) -> str | None:
    return version.tags.get("onnx_sha256")  # type: ignore[attr-defined]


def _data_fingerprint(folder: Path) -> str:
    """The training folder's content hash (shared.core.dataset: file names, labels and bytes)."""
    from shared.core.dataset import discover

    return discover(folder).train.fingerprint()


def _git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


GUARD_COMMAND = ".venv/bin/python -m deploy.pretrained refit-guard --data {data} --seed {seed} --weights <weights>"
UPDATE_ENSEMBLE_COMMAND = ".venv/bin/python -m deploy.pretrained update-ensemble --from-registry <the runs' MLflow>"


def refit_guard(data_dir: Path, folder: Path = BUNDLE_DIR, seed: int = 42, weights: Path | None = None) -> BundledGuard:
    """Replace the bundle's guard by one fitted on every image of ``data_dir`` (``ood_guard.fit_guard_cv``: its
    thresholds and false-refusal rate cross-validated over them), as a refit run with ``--guard`` fits it; the
    families are left alone. For a change of the guard's input kind, which makes the bundled guard unusable.
    ``weights``: the ImageNet MobileNetV2 file its texture detector is built from (None: Keras's cache folder;
    neither: WEIGHTS_NOT_FOUND)."""
    from services.training.data import prepare_data
    from services.training.ood_guard import GUARD_IMAGE_SIZE, fit_guard_cv, guard_onnx

    manifest, files = load_bundle(folder)
    data = prepare_data(data_dir, 0.0, seed, PROJECT_ROOT / "var" / "cache")
    guard, _ = fit_guard_cv(
        data.train_files.paths,
        data.train(GUARD_IMAGE_SIZE),
        data.train_groups,
        data.train_labels,
        seed=seed,
        weights=weights,
    )
    command = GUARD_COMMAND.format(data=data_dir, seed=seed)
    entry = BundledGuard(
        registered_name=GUARD_REGISTERED_NAME, file="guard.onnx", sha256="0" * 64, size_bytes=1, command=command
    )
    updated = manifest.model_copy(update={"guard": entry})
    return write_bundle(folder, updated, {**files, GUARD_KEY: guard_onnx(guard)}).guard or entry


def _parse_versions(text: str | None) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in (text or "").split(",") if item]
    return {family.strip(): version.strip() for family, version in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["register", "build", "train-command", "refit-guard", "update-ensemble"])
    parser.add_argument("--seed", type=int, default=42, help="refit-guard: the folds' and the mixture's seed")
    parser.add_argument(
        "--weights",
        type=Path,
        default=os.environ.get("BT_MOBILENETV2_WEIGHTS"),
        help="refit-guard: ImageNet MobileNetV2 no-top weights (.h5) for the guard's texture detector "
        "(default: $BT_MOBILENETV2_WEIGHTS, else Keras's cache folder)",
    )
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR, help="bundle folder (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="register: target")
    parser.add_argument("--from-registry", help="build, update-ensemble: the MLflow of the finished full-data run")
    parser.add_argument("--versions", help="build: versions to bundle instead of the champions, e.g. rf=3,cnn=2")
    parser.add_argument(
        "--keep-guard",
        action="store_true",
        help="build: keep the bundle's own guard (from refit-guard), not the registry's",
    )
    parser.add_argument("--data-description", default="brain-tumor-mri Training (5,708 images)")
    parser.add_argument(
        "--data", type=Path, help="build: the training folder, whose content fingerprint the manifest records"
    )
    parser.add_argument("--data-fingerprint", help="build: the data's fingerprint when --data is not at hand")
    parser.add_argument("--images", type=int, help="build: images the bundled models were fitted on (required)")
    parser.add_argument(
        "--evaluation",
        default="recipe evaluated on a 20% duplicate-aware test split (seed 42); these models refit with it on every "
        "image less the 10% calibration slice",
        help="build: how the models were evaluated and fitted (the manifest's label)",
    )
    parser.add_argument(
        "--command-line",
        help="build: the exact commands of the runs (default: train-command's); update-ensemble: those of the "
        "ensemble's runs",
    )
    args = parser.parse_args(argv)
    if args.command == "train-command":
        print("\n".join(TRAIN_STEPS))
        return 0
    if args.command == "refit-guard":
        if args.data is None:
            parser.error("refit-guard needs --data (the full training folder)")
        guard = refit_guard(args.data, args.bundle, args.seed, args.weights)
        print(f"the bundle's guard is now {guard.file} ({guard.size_bytes} bytes, sha256 {guard.sha256[:12]}...)")
        return 0
    try:
        if args.command == "update-ensemble":
            if not args.from_registry or not args.command_line:
                parser.error("update-ensemble needs --from-registry URI and --command-line (the ensemble's runs)")
            ensemble = update_ensemble(args.from_registry, args.command_line, args.bundle)
            print(f"the bundle's ensemble is now {ensemble.weights}, temperature {ensemble.temperature:.3f}")
            return 0
        if args.command == "register":
            if not args.tracking_uri:
                parser.error("register needs --tracking-uri or MLFLOW_TRACKING_URI")
            versions = register(args.tracking_uri, args.bundle)
            manifest = load_manifest(args.bundle)
            print(
                f"registered the pretrained bundle {args.bundle} (commit {manifest.commit[:12]}, "
                f"{manifest.label()}): {versions}"
            )
            return 0
        if not args.from_registry or args.images is None:
            parser.error("build needs --from-registry URI and --images N")
        data = DataProvenance(
            description=args.data_description,
            fingerprint=_data_fingerprint(args.data) if args.data else args.data_fingerprint or "",
            images=args.images,
            evaluation=args.evaluation,
        )
        command = args.command_line or " && ".join(TRAIN_STEPS)
        manifest = build(
            args.from_registry, args.bundle, data, command, _parse_versions(args.versions), keep_guard=args.keep_guard
        )
        print(f"wrote {args.bundle}: {len(manifest.models)} models, {manifest.total_bytes() / 1e6:.1f} MB")
        return 0
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
