"""What the deployment files may name, derived from the code that reads it, never from a second list.

- ``service_contract(name)``: for one of our services, as its image would run it (``describe_service`` builds the
  app in an interpreter that sees only the distributions the image's extras install, and fails if the service
  needs another): the environment variables its settings class reads, the variables its code reads itself
  (``os.environ`` / ``os.getenv`` calls with a literal name in its package and in ``shared/``), MLflow's client
  variables when its code imports mlflow, its default port, default trusted hosts and the GET paths it serves.
- ``mlflow_server_variables()``: what ``mlflow server`` reads (its click options' variables, every variable
  ``mlflow.environment_variables`` declares) and the S3 keys boto3 reads, for the MLflow container; read from
  their source files, since importing MLflow's server costs seconds.
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
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from deploy.processes import PROJECT_ROOT, SERVICE_APPS

SERVICES = tuple(SERVICE_APPS)
DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"
PROJECT_NAME = "brain-tumor-zoo"
# Variables of the Python runtime, pip and matplotlib that images may set: not settings of ours.
RUNTIME_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "MPLCONFIGDIR",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
)
_ENVIRON_CALLS = {("os", "getenv"), ("environ", "get"), ("environ", "setdefault"), ("environ", "pop")}


@dataclass(frozen=True)
class ServiceContract:
    name: str
    settings_class: str
    env_prefix: str
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

    def reads(self, variable: str) -> bool:
        return variable.upper() in self.env_names


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


def _source_of(module: str) -> ast.Module:
    """A module's parsed source, found without importing it or its parent packages (find_spec on a submodule
    imports its parents: for MLflow's server, seconds)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    assert spec and spec.origin, f"{top} not found"
    base = Path(spec.origin).parent.joinpath(*rest)
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return ast.parse(path.read_text())


@functools.cache
def mlflow_client_variables() -> frozenset[str]:
    """Every variable MLflow declares in mlflow.environment_variables (MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD,
    ...): the first argument of each ``_EnvironmentVariable(...)`` / ``_BooleanEnvironmentVariable(...)``."""
    names = {
        str(node.args[0].value)
        for node in ast.walk(_source_of("mlflow.environment_variables"))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "").endswith("EnvironmentVariable")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert "MLFLOW_TRACKING_PASSWORD" in names, "mlflow.environment_variables changed shape: read it another way"
    return frozenset(names)


def _class_constants(module: str, class_name: str) -> dict[str, Any]:
    for node in ast.walk(_source_of(module)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                target.id: ast.literal_eval(item.value)
                for item in node.body
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
                for target in item.targets
                if isinstance(target, ast.Name)
            }
    raise AssertionError(f"{module}.{class_name} not found")


@functools.cache
def mlflow_server_variables() -> frozenset[str]:
    """What the MLflow server container may be given: ``mlflow server``'s option variables, MLflow's declared
    variables, and the S3 keys boto3 reads (its credential provider's names)."""
    # The click options' ``envvar="..."`` names, read from mlflow/cli's source: importing it loads all of MLflow.
    options = {
        str(node.value.value)
        for node in ast.walk(_source_of("mlflow.cli"))
        if isinstance(node, ast.keyword) and node.arg == "envvar" and isinstance(node.value, ast.Constant)
    }
    assert "MLFLOW_BACKEND_STORE_URI" in options, "mlflow server's options moved: read them another way"
    boto = _class_constants("botocore.credentials", "EnvProvider")
    return frozenset(options | mlflow_client_variables() | {boto["ACCESS_KEY"], boto["SECRET_KEY"]})


@functools.cache
def mlflow_health_paths() -> frozenset[str]:
    """MLflow's HEALTH_ENDPOINTS (answered without credentials), read from its source: importing mlflow.server
    loads the whole server."""
    for node in ast.walk(_source_of("mlflow.server.security_utils")):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "HEALTH_ENDPOINTS" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError("MLflow's HEALTH_ENDPOINTS moved: read them another way")


MLFLOW_ENTRYPOINT = PROJECT_ROOT / "deploy" / "docker" / "mlflow-entrypoint.sh"


def entrypoint_defaults() -> dict[str, str | None]:
    """The variables the MLflow image's entrypoint script reads (``${NAME}``, ``${NAME:-default}``, ...), each with
    its default (None when it has none)."""
    found = re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?", MLFLOW_ENTRYPOINT.read_text())
    return {name: default or None for name, default in found}


def mlflow_container_variables() -> frozenset[str]:
    """Everything the MLflow container may be given: what MLflow and boto3 read, and what its entrypoint reads."""
    return mlflow_server_variables() | frozenset(entrypoint_defaults())


def image_extras(service: str) -> frozenset[str]:
    """The extras the project is installed with in ``deploy/docker/<service>.Dockerfile`` (exactly one install)."""
    path = DOCKER_DIR / f"{service}.Dockerfile"
    found = [extras for args in pip_installs(parse_dockerfile(path)) if (extras := project_extras(args)) is not None]
    assert len(found) == 1, f"{path.name}: expected one `pip install .[extras]`, found {found}"
    return found[0]


def describe_in_image(service: str, distributions: frozenset[str]) -> subprocess.CompletedProcess[str]:
    """``tests.deploy.describe_service`` in a fresh interpreter that sees only ``distributions``."""
    command = [sys.executable, "-m", "tests.deploy.describe_service", service, json.dumps(sorted(distributions))]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)


def _describe(service: str) -> dict[str, Any]:
    result = describe_in_image(service, installed_distributions(image_extras(service)) | {PROJECT_NAME})
    assert result.returncode == 0, (
        f"{service} cannot start with only what its image installs ({sorted(image_extras(service))}):\n"
        f"{result.stderr[-2000:]}"
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@functools.cache
def _descriptions() -> dict[str, dict[str, Any]]:
    # All four at once, two at a time (2 CPUs): each is an interpreter importing one service's stack.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(SERVICES, pool.map(_describe, SERVICES), strict=True))


@functools.cache
def service_contract(service: str) -> ServiceContract:
    described = _descriptions()[service]
    sources = _sources(f"services/{service}", "shared")
    code_reads = {name.upper() for source in sources for name in _literal_environ_reads(source)}
    uses_mlflow = any(_imports_mlflow(source) for source in _sources(f"services/{service}"))
    names = set(described["settings_variables"]) | code_reads
    if uses_mlflow:
        names |= mlflow_client_variables()
    return ServiceContract(
        name=service,
        settings_class=described["settings_class"],
        env_prefix=described["env_prefix"],
        env_names=frozenset(names),
        default_port=described["default_port"],
        get_paths=frozenset(described["get_paths"]),
        default_allowed_hosts=tuple(described["default_allowed_hosts"]),
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
