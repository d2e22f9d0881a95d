"""``GET /v1/models``: every registered model with its versions, aliases, run metrics and default version.

MLflow's current answer when it answers; while it is unreachable, the last catalogue, with the metrics of the
runs read before (the others are left out).
"""

from __future__ import annotations

import logging

from services.inference.catalog import ModelRecord, VersionRecord
from services.inference.registry import ModelRegistry
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import ModelInfo, ModelsOut, ModelVersionInfo

logger = logging.getLogger(__name__)


def list_models(registry: ModelRegistry) -> ModelsOut:
    catalog = registry.snapshot.current(max_age_s=0)
    return ModelsOut(models=[_describe(registry, catalog.models[name]) for name in catalog.names()])


def _run_metrics(registry: ModelRegistry, run_id: str | None) -> dict[str, float]:
    try:
        return registry.store.run_metrics(run_id)
    except ServiceError as exc:
        if exc.code is not ErrorCode.REGISTRY_UNAVAILABLE:
            raise
        return {}


def _describe(registry: ModelRegistry, record: ModelRecord) -> ModelInfo:
    aliases = record.aliases_by_version()
    versions = [
        ModelVersionInfo(
            version=number,
            aliases=aliases.get(number, []),
            run_id=record.versions[number].run_id,
            created_at=record.versions[number].created_at,
            metrics=_run_metrics(registry, record.versions[number].run_id),
            pretrained_on=record.versions[number].pretrained_on,
            **_ensemble_fields(registry, record, record.versions[number]),
        )
        for number in record.version_numbers()
    ]
    return ModelInfo(
        model=record.short_name,
        registered_name=record.registered_name,
        default_version=record.default_version(),
        versions=versions,
    )


def _ensemble_fields(registry: ModelRegistry, record: ModelRecord, version_record: VersionRecord) -> dict[str, dict]:
    """An ensemble version's members and weights for the listing, as it answers (a member weighing 0 is not run);
    nothing when unreadable (logged)."""
    if version_record.kind != "ensemble":
        return {}
    try:
        spec = registry.ensemble_spec(record, version_record)
    except ServiceError as exc:
        logger.warning("ensemble/%s listed without its members: %s", version_record.version, exc.message)
        return {}
    members = spec.running_members()
    return {"members": members, "weights": {member: spec.weights[member] for member in members}}
