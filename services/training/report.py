"""The comparison report: the four families side by side, the study's figures beside them."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow

from services.training import plots
from services.training.families import family_class
from services.training.options import TrainingOptions

logger = logging.getLogger(__name__)


def _study_accuracy(family_name: str) -> float | None:
    """What the original student study reported for the family (its split leaked rotated copies of test images)."""
    return family_class(family_name).study_accuracy


def _title(row: dict[str, Any]) -> str:
    """The family's title, with the kind of forest when the search chose extra trees over a random forest."""
    title = family_class(row["family"]).title
    forest = str(row.get("params", {}).get("forest", "")).replace("_", " ")
    return f"{title} ({forest})" if forest and forest != title.lower() else title


def _row_line(row: dict[str, Any]) -> str:
    m = row["metrics"]
    study = _study_accuracy(row["family"])
    cv = row["cv"].get("cv_mean_val_accuracy")
    cells = [
        _title(row),
        f"{m['test_accuracy']:.4f}",
        f"{m['test_f1_macro']:.4f}",
        f"{m['test_precision_macro']:.4f}",
        f"{m['test_recall_macro']:.4f}",
        f"{m.get('test_roc_auc_ovr_macro', float('nan')):.4f}",
        f"{cv:.4f}" if cv is not None else "-",
        f"{study:.3f}" if study else "not reported",
        f"{row['search_seconds'] / 60:.1f}",
        f"{row['train_seconds'] / 60:.1f}",
        f"{m['onnx_ms_per_image']:.2f}",
        f"{m['onnx_bytes'] / 1e6:.1f}",
        f"v{row['version']}" if row.get("version") else "not registered",
    ]
    return "| " + " | ".join(cells) + " |"


def _stage_line(row: dict[str, Any]) -> str:
    stages, metrics = row["stages"], row["metrics"]
    frozen, tuned = stages.get("frozen_head_test_accuracy"), metrics["test_accuracy"]
    head_minutes = (stages.get("lower_features_seconds", 0) + stages.get("head_seconds", 0)) / 60
    tune_minutes = stages["fine_tune_seconds"] / 60
    blocks = row["params"].get("fine_tune_blocks")
    if frozen is None:  # trained whole from the start (fine_tune_blocks=16): there is no frozen stage to compare
        family = row["family"]
        return f"- **{family}**: trained whole ({blocks} blocks) {tuned:.4f} test accuracy ({tune_minutes:.1f} min)."
    line = (
        f"- **{row['family']}**: frozen base + head {frozen:.4f} test accuracy ({head_minutes:.1f} min); "
        f"with the top {blocks} blocks fine-tuned {tuned:.4f} ({tuned - frozen:+.4f} for {tune_minutes:.1f} more min)."
    )
    if "fine_tune_kept" in stages:
        verdict = "kept" if stages["fine_tune_kept"] else "not kept: the frozen model is the one registered"
        line += (
            f" Validation accuracy frozen {stages['frozen_val_accuracy']:.4f}, fine-tuned "
            f"{stages['fine_tuned_val_accuracy']:.4f}: fine-tuning {verdict}."
        )
    return line


def _calibration_line(row: dict[str, Any]) -> str:
    m = row["metrics"]
    temperature = m.get("calibration_temperature")
    cells = [
        row["family"],
        f"{temperature:.3f}" if temperature is not None else "-",
        f"{m['test_ece_uncalibrated']:.4f}" if "test_ece_uncalibrated" in m else "-",
        f"{m['test_ece']:.4f}",
        f"{m['test_brier_uncalibrated']:.4f}" if "test_brier_uncalibrated" in m else "-",
        f"{m['test_brier']:.4f}",
        f"{m['test_accuracy']:.4f}",
    ]
    return "| " + " | ".join(cells) + " |"


def calibration_markdown(rows: list[dict[str, Any]], ensemble: dict[str, Any] | None) -> str:
    """The calibration table (ECE over 15 bins and Brier, before and after) and the ensemble's weights."""
    calibrated = [row for row in rows if "test_ece" in row["metrics"]]
    if not calibrated and ensemble is None:
        return "No calibration figures in this run."
    lines = [
        "| model | temperature | test ECE before | test ECE after | test Brier before | test Brier after | "
        "test accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(_calibration_line(row) for row in [*calibrated, *([ensemble] if ensemble else [])]),
    ]
    if ensemble:
        spec = ensemble["params"]
        members = ", ".join(f"{family} v{version} x {spec['weights'][family]:.3f}" for family, version in
                            spec["members"].items())  # fmt: skip
        lines.append(f"\nEnsemble ({spec['weighting']}; temperature {spec.get('temperature', 1.0):.3f}): {members}.")
    return "\n".join(lines)


def comparison_markdown(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    options: TrainingOptions,
    seconds: float,
    ensemble: dict[str, Any] | None = None,
) -> str:
    header = (
        "| family | test accuracy | macro F1 | macro precision | macro recall | ROC-AUC (OvR, macro) | "
        "CV accuracy (3-fold mean) | study accuracy | search min | refit min | ONNX ms/image | ONNX MB | version |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    stages = "\n".join(_stage_line(row) for row in rows if row.get("stages", {}).get("fine_tune_seconds"))
    params = "\n".join(f"- **{row['family']}**: `{json.dumps(row['params'], sort_keys=True)}`" for row in rows)
    sets = "".join(f" --set {key}={json.dumps(value)}" for key, value in sorted(options.overrides.items()))
    return f"""# Model comparison

Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m services.training.cli --search {options.search}{sets}` on
`{info["data_dir"]}` (whole run {seconds / 60:.1f} minutes).

{header}
{chr(10).join(_row_line(row) for row in rows)}

![comparison](comparison.png)

## Calibration and the ensemble
Temperature scaling fitted on a duplicate-aware calibration slice of the training images (never the test
split); expected calibration error over 15 equal-width bins of top-label confidence; multi-class Brier score.
Reliability diagrams: `reliability_<family>.png`.

{calibration_markdown(rows, ensemble)}

## Data and split
- Training pool: {info["train_pool_images"]} images; test set: {info["test_images"]} images
  ({info["test_source"]}); training: {info["train_images"]} images.
- Every image decoded to one 8-bit grayscale channel, whatever its file mode.
- Near-duplicates (256-bit difference hash, confirmed by thumbnail pixels for the looser matches):
  {info["duplicate_groups"]} groups holding {info["images_in_duplicate_groups"]} images
  (largest {info["largest_duplicate_group"]}); each group is kept on one side of the test split and of every CV fold.
- Test file list hash (sha256): `{info["test_files_sha256"]}` (the list itself is logged with each family's MLflow run).
- Class balancing (rotation oversampling or class weights) is a search option applied inside training folds
  only; rotated copies of validation or test images are never trained on.

## Does fine-tuning pay?
{stages or "No family was fine-tuned in this run."}

## Winning parameters
{params}

## The original study
It reported 92% (Random Forest) and 95.2% (CNN) accuracy, but oversampled by rotation before splitting, so
rotated copies of test images were in its training data; its figures are not comparable to held-out figures.
"""


def write_comparison(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    options: TrainingOptions,
    seconds: float,
    report_dir: Path,
    ensemble: dict[str, Any] | None = None,
) -> Path:
    """Write reports/comparison.md and comparison.png (and the reliability diagrams), and log them to an
    MLflow run."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row.get("reliability_png"):
            (report_dir / f"reliability_{row['family']}.png").write_bytes(row["reliability_png"])
    markdown = comparison_markdown(rows, info, options, seconds, ensemble)
    chart_rows = [
        {
            "family": row["family"],
            "accuracy": row["metrics"]["test_accuracy"],
            "f1_macro": row["metrics"]["test_f1_macro"],
            "study_accuracy": _study_accuracy(row["family"]) or "",
        }
        for row in rows
    ]
    (report_dir / "comparison.md").write_text(markdown)
    (report_dir / "comparison.png").write_bytes(plots.comparison_png(chart_rows))
    with mlflow.start_run(run_name="comparison-report"):
        mlflow.set_tags({"stage": "report"})
        mlflow.log_metric("run_minutes", seconds / 60)
        mlflow.log_artifact(str(report_dir / "comparison.md"), artifact_path="report")
        mlflow.log_artifact(str(report_dir / "comparison.png"), artifact_path="report")
    logger.info("comparison report written to %s", report_dir / "comparison.md")
    return report_dir / "comparison.md"
