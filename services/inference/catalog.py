"""The registry's catalogue: which models, versions and aliases exist, and which version a request means.

Pure data and rules, no I/O: ``mlflow_store`` fills a ``Catalog`` from MLflow, the registry keeps
the latest snapshot, and everything here is tested without a server.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import CHAMPION_ALIAS, LATEST_VERSION, MODEL_FAMILIES


@dataclass(frozen=True)
class VersionRecord:
    """One registered version as MLflow describes it."""

    version: str
    run_id: str | None
    source: str
    created_at: str | None
    # The sha256 of the version's ONNX file, tagged at registration (``onnx_sha256``); None for versions
    # registered before training tagged it.
    onnx_sha256: str | None = None
    # "onnx": the version is an ONNX file; "ensemble": a spec combining other models' versions (no file of its own).
    kind: str = "onnx"
    # The pretrained bundle's "pretrained on ..." label (``pretrained_on`` tag); None for versions trained here.
    pretrained_on: str | None = None


def _version_sort_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


@dataclass(frozen=True)
class ModelRecord:
    """One registered model with its versions and aliases (alias -> version)."""

    short_name: str
    registered_name: str
    versions: dict[str, VersionRecord]
    aliases: dict[str, str]

    def version_numbers(self) -> list[str]:
        """Versions, newest first."""
        return sorted(self.versions, key=_version_sort_key, reverse=True)

    def latest_version(self) -> str | None:
        numbers = self.version_numbers()
        return numbers[0] if numbers else None

    def default_version(self) -> str | None:
        """The champion alias when it points at an existing version, otherwise the latest version."""
        champion = self.aliases.get(CHAMPION_ALIAS)
        return champion if champion in self.versions else self.latest_version()

    def resolve(self, spec: str | None) -> str | None:
        """A version number, an alias, the latest-version spec or nothing (the default) to a version number."""
        if spec is None or not spec.strip():
            return self.default_version()
        spec = spec.strip()
        if spec.isdigit():
            number = str(int(spec))
            return number if number in self.versions else None
        if spec == LATEST_VERSION:
            return self.latest_version()
        target = self.aliases.get(spec)
        return target if target in self.versions else None

    def aliases_by_version(self) -> dict[str, list[str]]:
        """Version -> its aliases, sorted by alias name."""
        by_version: dict[str, list[str]] = {}
        for alias, number in sorted(self.aliases.items()):
            by_version.setdefault(number, []).append(alias)
        return by_version

    def describe_available(self) -> str:
        numbers = ", ".join(self.version_numbers()) or "none"
        aliases = ", ".join(f"{alias} -> {version}" for alias, version in sorted(self.aliases.items()))
        return f"Available versions: {numbers}" + (f"; aliases: {aliases}." if aliases else ".")


@dataclass(frozen=True)
class Catalog:
    """A snapshot of the registry's models, taken at ``fetched_at`` (monotonic seconds).

    ``from_disk``: read back from the copy saved beside the model cache (MLflow was not asked yet).
    """

    models: dict[str, ModelRecord]
    fetched_at: float = field(default_factory=time.monotonic)
    from_disk: bool = False

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON data (what ``from_json`` reads back)."""
        return {
            "models": {
                name: {
                    "registered_name": record.registered_name,
                    "aliases": dict(record.aliases),
                    "versions": [asdict(version) for version in record.versions.values()],
                }
                for name, record in self.models.items()
            }
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalog:
        """A snapshot saved by ``to_json``, marked as read from disk and as old as can be (refreshed first)."""
        models = {}
        for name, entry in data["models"].items():
            versions = {str(v["version"]): VersionRecord(**v) for v in entry["versions"]}
            models[name] = ModelRecord(name, entry["registered_name"], versions, dict(entry["aliases"]))
        return cls(models, fetched_at=float("-inf"), from_disk=True)

    def defaults(self) -> list[str]:
        """Names of the models whose default version is an ONNX file to load (a model registered without
        versions has no default; an ensemble's version is served through its members)."""
        names = []
        for name in self.names():
            record = self.models[name]
            default = record.default_version()
            if default is not None and record.versions[default].kind == "onnx":
                names.append(name)
        return names

    def names(self) -> list[str]:
        """Short names, the known families first."""
        known = [name for name in MODEL_FAMILIES if name in self.models]
        return known + sorted(name for name in self.models if name not in MODEL_FAMILIES)

    def age_s(self) -> float:
        return time.monotonic() - self.fetched_at

    def has(self, model: str, spec: str | None) -> bool:
        """Whether ``model`` exists and ``spec`` resolves to one of its versions."""
        record = self.models.get(model)
        return record is not None and record.resolve(spec) is not None

    def resolve(self, model: str, spec: str | None) -> tuple[ModelRecord, VersionRecord]:
        """Find a model and version, or raise MODEL_NOT_FOUND / VERSION_NOT_FOUND naming what exists."""
        record = self.models.get(model)
        if record is None:
            available = self.names()
            listing = ", ".join(available) or "none registered yet"
            raise ServiceError(
                ErrorCode.MODEL_NOT_FOUND,
                f"Unknown model {model!r}. Available models: {listing}.",
                {"available_models": available},
            )
        number = record.resolve(spec)
        if number is None:
            wanted = f"version or alias {spec!r}" if spec else "versions yet"
            raise ServiceError(
                ErrorCode.VERSION_NOT_FOUND,
                f"Model {model!r} has no {wanted}. {record.describe_available()}",
                {"available_versions": record.version_numbers(), "aliases": dict(record.aliases)},
            )
        return record, record.versions[number]
