"""Describe one service as its image would run it, for tests/deploy/contracts.py (run in a fresh interpreter):

    python -m tests.deploy.describe_service <service> '<JSON list of distributions>'

Every top-level module of a distribution not in the list is hidden first (None in ``sys.modules``: importing it
fails, ``importlib.util.find_spec`` says it is absent), so optional imports fall back as they would in the image
and a required one fails. Then the service's settings class and app are built, and what they read and serve is
printed as JSON: the environment variables of the settings class (its prefix and field names, or a field's
aliases), its default port and trusted hosts, and the paths the app answers GET on (its OpenAPI schema, built
from its routes).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
from typing import Any


def hide_all_but(allowed: set[str]) -> None:
    def normal(name: str) -> str:
        return name.replace("_", "-").replace(".", "-").lower()

    for module, owners in importlib.metadata.packages_distributions().items():
        if module not in sys.modules and not any(normal(owner) in allowed for owner in owners):
            sys.modules[module] = None  # type: ignore[assignment]


def describe(service: str) -> dict[str, Any]:
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    config = importlib.import_module(f"services.{service}.config")
    (settings_type,) = [
        value
        for value in vars(config).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == config.__name__
    ]
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, info in settings_type.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{info.alias or name}")
    hosts = settings_type.model_fields.get("allowed_hosts")
    # model_construct: the defaults, whatever the environment of this interpreter says.
    app = importlib.import_module(f"services.{service}.main").create_app(settings_type.model_construct())
    return {
        "settings_class": settings_type.__name__,
        "env_prefix": prefix.upper(),
        "settings_variables": sorted(name.upper() for name in names),
        "default_port": int(settings_type.model_fields["port"].default),
        "default_allowed_hosts": list(hosts.get_default(call_default_factory=True)) if hosts else [],
        "get_paths": sorted(path for path, operations in app.openapi()["paths"].items() if "get" in operations),
    }


def main() -> None:
    service, allowed = sys.argv[1], json.loads(sys.argv[2])
    hide_all_but(set(allowed))
    print(json.dumps(describe(service)))


if __name__ == "__main__":
    main()
