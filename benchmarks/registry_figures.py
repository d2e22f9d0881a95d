"""The champions' test-split figures, read back from an MLflow registry:
`python -m benchmarks.registry_figures [--tracking-uri URI] [--versions rf=2,cnn=1]`.

For a full-data evaluation whose families did not all train in one run (e.g. MobileNetV2 trained alone and the
ensemble rebuilt over all four with `python -m services.training.ensemble_cli`), this prints and writes to
docs/benchmarks.md one table of what each run logged: test accuracy and macro F1, calibration (temperature, ECE
over 15 bins and Brier before and after) and the ensemble's weights, with the gain of the ensemble over the best
single family. Every figure is an MLflow metric of the version's own run; nothing is recomputed here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from benchmarks.markdown import command_line, write_section
from services.training.report import calibration_markdown
from shared.core.ensemble_spec import WEIGHTS_TAG
from shared.kit.schemas import CHAMPION_ALIAS, ENSEMBLE_MODEL, MODEL_FAMILIES, registered_name


def _version(client: MlflowClient, family: str, wanted: str | None) -> Any:
    name = registered_name(family)
    try:
        if wanted:
            return client.get_model_version(name, wanted)
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def _row(client: MlflowClient, family: str, version: Any) -> dict[str, Any]:
    run = client.get_run(version.run_id).data
    return {"family": family, "version": str(version.version), "metrics": run.metrics, "tags": run.tags}


def _ensemble_row(client: MlflowClient, version: Any) -> dict[str, Any]:
    row = _row(client, ENSEMBLE_MODEL, version)
    members = {k[len("member_") :]: v for k, v in version.tags.items() if k.startswith("member_")}
    weights = json.loads(version.tags.get(WEIGHTS_TAG, "{}"))
    row["params"] = {"members": members, "weights": weights, "weighting": row["tags"].get("weighting", "")}
    return row


def _images(row: dict[str, Any]) -> str:
    images = row["metrics"].get("test_images")
    return f"{int(images)}" if images is not None else "the members'"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--versions", default="", help="family=version pairs instead of the champions")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("give --tracking-uri or MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    wanted = dict(item.split("=", 1) for item in args.versions.split(",") if item)
    rows = [_row(client, f, v) for f in MODEL_FAMILIES if (v := _version(client, f, wanted.get(f))) is not None]
    ensemble_version = _version(client, ENSEMBLE_MODEL, wanted.get(ENSEMBLE_MODEL))
    ensemble = _ensemble_row(client, ensemble_version) if ensemble_version is not None else None
    accuracy = [
        f"| {row['family']} | v{row['version']} | {row['metrics']['test_accuracy']:.4f} | "
        f"{row['metrics'].get('test_f1_macro', float('nan')):.4f} | {_images(row)} |"
        for row in [*rows, *([ensemble] if ensemble else [])]
    ]
    best = max(rows, key=lambda row: row["metrics"]["test_accuracy"])
    gain = ""
    if ensemble:
        points = 100 * (ensemble["metrics"]["test_accuracy"] - best["metrics"]["test_accuracy"])
        verdict = "met" if points >= 0.5 else "NOT met"
        gain = (
            f"\n\nEnsemble against the best single family ({best['family']}): {points:+.2f} points "
            f"(target +0.5: {verdict})."
        )
    eces = [row["metrics"]["test_ece"] for row in rows]
    ece_verdict = "met" if max(eces) <= 0.03 else "NOT met"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""## Champions on the full data's test split (`{command_line("benchmarks.registry_figures", argv)}`)

Read {when} from the registry of the full-data runs (figures as each run logged them on the same duplicate-aware
20% test split, seed 42).

| model | version | test accuracy | macro F1 | test images |
|---|---|---:|---:|---:|
{chr(10).join(accuracy)}

{calibration_markdown(rows, ensemble)}

Calibrated ECE at most 0.03 for every family: {ece_verdict} (largest {max(eces):.4f}).{gain}
"""
    print(body)
    write_section("registry-figures", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
