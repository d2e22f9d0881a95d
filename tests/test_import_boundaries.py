"""No service imports another, and shared/ imports no service.

What two services share lives in shared/; a service reaches another only over HTTP. deploy/, benchmarks/
and tests/ may import any service (they start or measure them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES_DIR = ROOT / "services"
SERVICES = sorted(path.name for path in SERVICES_DIR.iterdir() if (path / "__init__.py").is_file())


def module_name(path: Path) -> str:
    """``services/gateway/routes/web.py`` -> ``services.gateway.routes.web`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module an import statement names, at any depth of the file (inside functions too);
    relative imports are resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                parent = ".".join(base)
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module or ""
            yield target
            # `from services import gateway` names the service in the alias, not in the module.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def service_of(module: str) -> str | None:
    """The service a dotted module name belongs to (``services.gateway.x`` -> ``gateway``), if any."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def imports_of(folder: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(folder.rglob("*.py")):
        name = module_name(path)
        for imported in imported_modules(path.read_text(), name, is_package=path.name == "__init__.py"):
            yield path, imported


def foreign_service_imports(service: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {imported}"
        for path, imported in imports_of(SERVICES_DIR / service)
        if service_of(imported) not in (None, service)
    ]


def test_the_four_services_are_scanned() -> None:
    assert SERVICES == ["explainer", "gateway", "inference", "training"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    assert foreign_service_imports(service) == []


def test_shared_imports_no_service() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {imported}"
        for path, imported in imports_of(ROOT / "shared")
        if imported == "services" or imported.startswith("services.")
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import services.inference.config", "services.gateway.main", "inference"),
        ("from services.explainer import config", "services.training.pipeline", "explainer"),
        ("from services import inference", "services.gateway.main", "inference"),
        ("def f():\n    from services.gateway.deps import x\n", "services.inference.main", "gateway"),
        ("from ..inference import registry", "services.explainer.main", "inference"),
        ("from ...training import cli", "services.gateway.routes.web", "training"),
    ],
)
def test_the_scan_finds_every_form_of_import(source: str, module: str, expected: str) -> None:
    services = {service_of(name) for name in imported_modules(source, module)}
    assert expected in services


def test_the_scan_accepts_a_service_importing_itself_and_shared() -> None:
    source = "from . import config\nfrom .routes import web\nfrom shared.kit.service import health_router\nimport os\n"
    services = {service_of(name) for name in imported_modules(source, "services.gateway.main")}
    assert services <= {"gateway", None}
