"""The alias names are defined once, in shared.kit.schemas: the inference service never spells them itself."""

from __future__ import annotations

import ast
from pathlib import Path

import services.inference
from shared.kit.schemas import BEST_ALIAS, CHAMPION_ALIAS, LATEST_VERSION

PACKAGE = Path(services.inference.__file__).parent


def test_no_module_of_the_service_spells_an_alias_name() -> None:
    spelled = [
        (str(module.relative_to(PACKAGE)), node.lineno, node.value)
        for module in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in {CHAMPION_ALIAS, BEST_ALIAS, LATEST_VERSION}
    ]
    assert len(list(PACKAGE.rglob("*.py"))) > 5  # the scan sees the package
    assert spelled == []
