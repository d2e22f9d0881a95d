"""What the deployment files may name, derived from the code that reads it, never from a second list.

- ``service_contract(name)``: for one of our services, the environment variables its settings class reads
  (env prefix + field names, or a field's aliases), the variables its code reads itself (``os.environ`` /
  ``os.getenv`` calls with a literal name in its package and in ``shared/``), MLflow's client variables when its
  code imports mlflow, its default port, the GET paths its ``create_app()`` serves, its default trusted hosts.
- ``mlflow_server_variables()``: what ``mlflow server`` reads (its click options' variables, every variable
  ``mlflow.environment_variables`` declares) and the S3 keys boto3 reads, for the MLflow container.
- ``extras_closure`` / ``installed_distributions``: which extras of pyproject.toml an image installs, and the
  distributions that brings in (with their dependencies, as installed here).
- ``parse_dockerfile``: the instructions of a Dockerfile, by stage.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata as metadata
import importlib.util
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from deploy.processes import PROJECT_ROOT, SERVICE_APPS

SERVICES = tuple(SERVICE_APPS)
PROJECT_NAME = "brain-tumor-zoo"
# Variables of the Python runtime, pip and matplotlib that images may set: not settings of ours.
RUNTIME_VARIABLES = frozenset(
    {"PATH", "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "MPLCONFIGDIR", "PIP_NO_CACHE_DIR",
     "PIP_DISABLE_PIP_VERSION_CHECK"}
)
_ENVIRON_CALLS = {("os", "getenv"), ("environ", "get"), ("environ", "setdefault"), ("environ", "pop")}


@dataclass(frozen=True)
class ServiceContract:
    name: str
    settings_type: type[BaseSettings]
    env_names: frozenset[str]
    default_port: int
    get_paths: frozenset[str]
    default_allowed_hosts: tuple[str, ...]
    uses_mlflow: bool

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def port_variable(self) -> str:
        return f"{self.env_prefix}PORT"

    @property
    def env_prefix(self) -> str:
        return str(self.settings_type.model_config.get("env_prefix", "")).upper()

    def reads(self, variable: str) -> bool:
        return variable.upper() in self.env_names


def settings_type_of(service: str) -> type[BaseSettings]:
    """The settings class ``services/<service>/config.py`` defines (the one BaseSettings subclass made there)."""
    module = importlib.import_module(f"services.{service}.config")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
    ]
    assert len(found) == 1, f"expected one settings class in {module.__name__}, found {found}"
    return found[0]


def settings_variables(settings_type: type[BaseSettings]) -> frozenset[str]:
    """Every environment variable a pydantic-settings class reads (upper case: it is case-insensitive)."""
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
    return frozenset(name.upper() for name in names)


def _literal_environ_reads(source: str) -> set[str]:
    """Names in ``os.environ.get("X")``, ``os.environ["X"]``, ``os.getenv("X")`` and the like."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner = node.func.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            first = node.args[0]
            if (owner_name, node.func.attr) in _ENVIRON_CALLS and isinstance(first, ast.Constant):
                found.add(str(first.value))
        subscript = isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
        if subscript and node.value.attr == "environ" and isinstance(node.slice, ast.Constant):
            found.add(str(node.slice.value))
    return found


def _imports_mlflow(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "mlflow" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            return True
    return False


def _sources(*folders: str) -> list[str]:
    return [path.read_text() for folder in folders for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))]


@functools.cache
def mlflow_client_variables() -> frozenset[str]:
    """Every variable MLflow's client library declares (MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD, ...)."""
    import mlflow.environment_variables as declared

    return frozenset(
        value.name for value in vars(declared).values() if isinstance(getattr(value, "name", None), str)
    )


@functools.cache
def mlflow_server_variables() -> frozenset[str]:
    """What the MLflow server container may be given: ``mlflow server``'s option variables, MLflow's declared
    variables, and the S3 keys boto3 reads (its credential provider's names)."""
    from botocore.credentials import EnvProvider

    # The click options' ``envvar="..."`` names, read from mlflow/cli's source: importing it loads all of MLflow.
    spec = importlib.util.find_spec("mlflow.cli")
    assert spec and spec.origin, "mlflow.cli not found"
    options = {
        str(node.value.value)
        for node in ast.walk(ast.parse(Path(spec.origin).read_text()))
        if isinstance(node, ast.keyword) and node.arg == "envvar" and isinstance(node.value, ast.Constant)
    }
    assert "MLFLOW_BACKEND_STORE_URI" in options, "mlflow server's options moved: read them another way"
    return frozenset(options | mlflow_client_variables() | {EnvProvider.ACCESS_KEY, EnvProvider.SECRET_KEY})


@functools.cache
def mlflow_health_paths() -> frozenset[str]:
    """MLflow's HEALTH_ENDPOINTS (answered without credentials), read from its source: importing mlflow.server
    loads the whole server."""
    spec = importlib.util.find_spec("mlflow.server.security_utils")
    assert spec and spec.origin, "mlflow.server.security_utils not found"
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "HEALTH_ENDPOINTS" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError("MLflow's HEALTH_ENDPOINTS moved: read them another way")


def served_get_paths(app: Any) -> frozenset[str]:
    """The paths the app answers GET on, as its OpenAPI schema (built from its routes) lists them."""
    return frozenset(path for path, operations in app.openapi()["paths"].items() if "get" in operations)


@functools.cache
def service_contract(service: str) -> ServiceContract:
    settings_type = settings_type_of(service)
    sources = _sources(f"services/{service}", "shared")
    code_reads = set().union(*(_literal_environ_reads(source) for source in sources))
    uses_mlflow = any(_imports_mlflow(source) for source in _sources(f"services/{service}"))
    names = set(settings_variables(settings_type)) | {name.upper() for name in code_reads}
    if uses_mlflow:
        names |= mlflow_client_variables()
    app = importlib.import_module(f"services.{service}.main").create_app(settings_type.model_construct())
    fields = settings_type.model_fields
    hosts_field = fields.get("allowed_hosts")
    default_hosts = tuple(hosts_field.get_default(call_default_factory=True)) if hosts_field else ()
    return ServiceContract(
        name=service,
        settings_type=settings_type,
        env_names=frozenset(names),
        default_port=int(fields["port"].default),
        get_paths=served_get_paths(app),
        default_allowed_hosts=default_hosts,
        uses_mlflow=uses_mlflow,
    )


def host_allowed(host: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """Starlette's TrustedHostMiddleware rule: exact name (port ignored), ``*.domain`` or ``*``."""
    name = host.split(":")[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return any(
        pattern == "*" or pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:]))
        for pattern in allowed
    )


def split_list(value: str) -> list[str]:
    """A comma-separated setting as the services split it."""
    return [part.strip() for part in value.split(",") if part.strip()]


# -- pyproject extras ----------------------------------------------------------------------------------


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def extras_closure(extras: frozenset[str]) -> frozenset[str]:
    """The extras given and those they pull in through ``brain-tumor-zoo[...]`` entries."""
    optional = pyproject()["project"]["optional-dependencies"]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        assert extra in optional, f"pyproject.toml has no extra {extra!r}; it has {sorted(optional)}"
        if extra in seen:
            continue
        seen.add(extra)
        for entry in optional[extra]:
            requirement = Requirement(entry)
            if requirement.name == PROJECT_NAME:
                todo.extend(requirement.extras)
    return frozenset(seen)


def direct_requirements(extras: frozenset[str]) -> list[Requirement]:
    """The project's own requirements plus those of the extras (self-references dropped)."""
    optional = pyproject()["project"]["optional-dependencies"]
    entries = list(pyproject()["project"]["dependencies"])
    entries += [entry for extra in sorted(extras_closure(extras)) for entry in optional[extra]]
    return [req for req in map(Requirement, entries) if req.name != PROJECT_NAME]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(extras: frozenset[str]) -> frozenset[str]:
    """The distributions ``pip install .[extras]`` brings in, with their dependencies as installed here."""
    seen: dict[str, set[str]] = {}
    todo: list[tuple[Requirement, set[str]]] = [(req, set()) for req in direct_requirements(extras)]
    while todo:
        requirement, parent_extras = todo.pop()
        environments = [{"extra": extra} for extra in parent_extras or {""}]
        if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
            continue
        name = _normal(requirement.name)
        wanted = set(requirement.extras)
        if name in seen and wanted <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | wanted
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        todo.extend((Requirement(entry), seen[name]) for entry in dist.requires or [])
    return frozenset(seen)


# -- Dockerfiles ---------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """A JSON-array argument (CMD ["python", ...]), or None for the shell form."""
        text = self.arguments.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for item in self.all("ENV"):
            for token in shlex.split(item.arguments):
                key, _, value = token.partition("=")
                values[key] = value
        return values


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile (continuation lines joined, comments and parser directives dropped)."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages


def healthcheck_url(stage: Stage) -> str:
    """The http URL the final stage's HEALTHCHECK command asks for."""
    (check,) = stage.all("HEALTHCHECK")
    match = re.search(r"(http://[^'\"\s]+)", check.arguments)
    assert match, f"HEALTHCHECK names no http URL: {check.arguments}"
    return match.group(1)


def pip_installs(stages: list[Stage]) -> list[list[str]]:
    """The arguments of every ``pip install`` in RUN lines, one list per install."""
    installs = []
    for stage in stages:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run.arguments):
                words = shlex.split(command)
                if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                    installs.append([word for word in words[2:] if not word.startswith("-")])
    return installs


def project_extras(install_args: list[str]) -> frozenset[str] | None:
    """``.[serve]`` -> {"serve"}; None when the install is not of this project."""
    for arg in install_args:
        match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", arg)
        if match:
            return frozenset(split_list(match.group(1) or ""))
    return None


def module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
