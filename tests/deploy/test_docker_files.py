"""The Dockerfiles (deploy/docker/) against the code: no Docker engine runs here, so what each image would do is
checked against what the services really read and serve (tests/deploy/contracts.py derives it from the code).

A Dockerfile fails here when it names an environment variable no settings class (or the service's code) reads,
a health path no route serves, a port the service does not listen on, a module or extra that does not exist,
installs [train] (or, for inference and the gateway, [explain]), or lacks a non-root user or a second stage.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from deploy.processes import (
    MLFLOW_AUTH_CACHE_TTL_S,
    MLFLOW_DEFAULT_PERMISSION,
    PROJECT_ROOT,
)
from tests.deploy.contracts import (
    MLFLOW_ENTRYPOINT,
    RUNTIME_VARIABLES,
    SERVICES,
    Stage,
    describe_in_image,
    entrypoint_defaults,
    extras_closure,
    healthcheck_url,
    host_allowed,
    image_extras,
    installed_distributions,
    mlflow_health_paths,
    mlflow_server_variables,
    module_exists,
    parse_dockerfile,
    pip_installs,
    pyproject,
    service_contract,
)

DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"
# The images that serve predictions must stay small and free of the training stack.
SERVING_ONLY = {"gateway", "inference"}


def dockerfile(service: str) -> Path:
    return DOCKER_DIR / f"{service}.Dockerfile"


def final_stage(path: Path) -> Stage:
    return parse_dockerfile(path)[-1]


def test_every_service_has_its_dockerfile_and_nothing_else_is_there() -> None:
    expected = {f"{name}.Dockerfile" for name in (*SERVICES, "mlflow")}
    assert {path.name for path in DOCKER_DIR.glob("*.Dockerfile")} == expected


@pytest.mark.parametrize("name", [*SERVICES, "mlflow"])
def test_image_is_multi_stage_and_runs_as_a_non_root_user(name: str) -> None:
    stages = parse_dockerfile(dockerfile(name))
    assert len(stages) >= 2, "build in one stage, copy the environment into a clean one"
    last = stages[-1]
    assert any(copy.arguments.startswith("--from=") for copy in last.all("COPY")), "nothing copied from the build"
    users = last.all("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].arguments.split(":")[0]
    assert user not in {"root", "0"}, f"runs as {user}"
    assert not any("pip install" in run.arguments for run in last.all("RUN")), "install in the build stage only"


@pytest.mark.parametrize("service", SERVICES)
def test_environment_names_are_read_by_the_service(service: str) -> None:
    contract = service_contract(service)
    env = final_stage(dockerfile(service)).env()
    unread = sorted(name for name in env if name not in RUNTIME_VARIABLES and not contract.reads(name))
    assert not unread, f"{service}.Dockerfile sets {unread}, which {contract.settings_class} never reads"
    # The service must listen on every interface in a container, on the port the image exposes.
    assert env.get(f"{contract.env_prefix}HOST") == "0.0.0.0"


@pytest.mark.parametrize("service", SERVICES)
def test_port_healthcheck_and_command_match_the_service(service: str) -> None:
    contract = service_contract(service)
    stage = final_stage(dockerfile(service))
    port = int(stage.env().get(contract.port_variable, contract.default_port))
    assert [int(item.arguments) for item in stage.all("EXPOSE")] == [port]
    url = urlsplit(healthcheck_url(stage))
    assert url.port == port, f"HEALTHCHECK asks port {url.port}, the service listens on {port}"
    assert url.path in contract.get_paths, f"HEALTHCHECK asks {url.path}; GET routes: {sorted(contract.get_paths)}"
    assert url.path == "/healthz", "Docker restarts on a failed HEALTHCHECK: liveness, not readiness"
    # The check comes from inside the container: its Host must pass the service's default trusted hosts.
    assert host_allowed(url.netloc, contract.default_allowed_hosts), (url.netloc, contract.default_allowed_hosts)
    (command,) = stage.all("CMD")
    assert command.exec_form() == ["python", "-m", contract.module]
    assert module_exists(f"{contract.module}.__main__")


@pytest.mark.parametrize("service", SERVICES)
def test_extras_exist_and_serving_images_stay_free_of_training(service: str) -> None:
    extras = image_extras(service)
    optional = pyproject()["project"]["optional-dependencies"]
    assert extras <= optional.keys(), f"{service} installs unknown extras {sorted(extras - optional.keys())}"
    closure = extras_closure(extras)
    if service == "training":
        assert "train" in closure
        return
    assert "train" not in closure, f"{service} installs [train] through {sorted(extras)}"
    if service in SERVING_ONLY:
        assert closure == {"serve"}, f"{service} must install only [serve], installs {sorted(closure)}"
        # Nothing that only training or explaining needs: TensorFlow, scikit-learn, LIME and what they bring.
        serving = installed_distributions(frozenset({"serve"}))
        heavy = installed_distributions(frozenset({"train"})) - serving
        assert {"tensorflow-cpu", "scikit-learn", "lime"} <= heavy
        assert not serving & heavy


def test_each_service_starts_with_only_what_its_image_installs() -> None:
    """Each app is built in an interpreter that sees only the distributions its image's extras bring (and this
    project): a service that starts needing a package its image lacks fails here, as it would in the container.
    (``service_contract`` builds the apps that way; every other check here uses what they said.)"""
    for service in SERVICES:
        assert service_contract(service).get_paths, f"{service} serves nothing"


def test_the_image_check_fails_without_the_extra() -> None:
    """The same check with only the core dependencies: the explainer needs LIME (fails at its first import)."""
    result = describe_in_image("explainer", installed_distributions(frozenset()) | {"brain-tumor-zoo"})
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


def test_mlflow_image_pins_what_pyproject_pins_and_reads_only_mlflow_variables() -> None:
    path = dockerfile("mlflow")
    stages = parse_dockerfile(path)
    (install,) = pip_installs(stages)
    pinned = {re.split(r"[\[=]", entry)[0]: entry for entry in pyproject()["project"]["optional-dependencies"]["train"]}
    for entry in install:
        name = re.split(r"[\[=]", entry)[0]
        assert pinned.get(name) == entry, f"mlflow.Dockerfile installs {entry}; pyproject's [train]: {pinned.get(name)}"
    env = stages[-1].env()
    unread = sorted(set(env) - RUNTIME_VARIABLES - mlflow_server_variables())
    assert not unread, f"mlflow.Dockerfile sets {unread}, which neither mlflow server nor boto3 reads"
    url = urlsplit(healthcheck_url(stages[-1]))
    assert url.path in mlflow_health_paths()
    assert [int(item.arguments) for item in stages[-1].all("EXPOSE")] == [url.port]


def test_mlflow_entrypoint_runs_basic_auth_with_the_launchers_defaults() -> None:
    (entrypoint,) = final_stage(dockerfile("mlflow")).all("ENTRYPOINT")
    assert Path(entrypoint.exec_form()[0]).name == MLFLOW_ENTRYPOINT.name
    text = MLFLOW_ENTRYPOINT.read_text()
    assert re.search(r"^exec mlflow server --app-name basic-auth \"\$@\"$", text, re.MULTILINE)
    assert "MLFLOW_AUTH_CONFIG_PATH" in mlflow_server_variables()
    defaults = entrypoint_defaults()
    assert defaults["MLFLOW_AUTH_DATABASE_URI"] is None, "the user store has no default: it must be given"
    assert defaults["MLFLOW_AUTH_DEFAULT_PERMISSION"] == MLFLOW_DEFAULT_PERMISSION
    assert defaults["MLFLOW_AUTH_CACHE_TTL_SECONDS"] == str(MLFLOW_AUTH_CACHE_TTL_S)


def test_mlflow_entrypoint_writes_its_auth_configuration_and_runs_mlflow_server(tmp_path: Path) -> None:
    """The script run for real with this environment's MLflow, asked for ``--help`` (a full start costs about
    20 s of CPU: it was run by hand once, anonymous calls 401, the admin 200). Its configuration is read with the
    keys MLflow's own basic_auth.ini has, and is readable by its owner only: it holds the user store's URI."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'basic_auth.db'}",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["sh", str(MLFLOW_ENTRYPOINT), "--help"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--app-name" in result.stdout and "--backend-store-uri" in result.stdout, "not mlflow server's help"
    # The options the image's CMD and the Kubernetes Deployment pass are options of `mlflow server`.
    (command,) = final_stage(dockerfile("mlflow")).all("CMD")
    deployments = yaml.safe_load_all((PROJECT_ROOT / "deploy" / "k8s" / "base" / "mlflow.yaml").read_text())
    (k8s_args,) = [
        doc["spec"]["template"]["spec"]["containers"][0]["args"] for doc in deployments if doc["kind"] == "Deployment"
    ]
    for option in {arg for arg in [*command.exec_form(), *k8s_args] if arg.startswith("--")}:
        # Listed as "  --port INTEGER" or "  -p, --port INTEGER".
        listed = rf"^\s+(?:-\w, )?{re.escape(option)}\b"
        assert re.search(listed, result.stdout, re.MULTILINE), f"mlflow server has no {option}"
    (config_path,) = tmp_path.glob("tmp.*/basic_auth.ini")
    assert config_path.stat().st_mode & 0o077 == 0, "the user store's URI is readable by others"
    config = configparser.ConfigParser()
    config.read(config_path)
    shipped = _shipped_auth_keys()
    unknown = set(config["mlflow"]) - shipped
    assert not unknown, f"keys MLflow's basic_auth.ini does not have: {unknown}"
    assert config["mlflow"]["database_uri"] == env["MLFLOW_AUTH_DATABASE_URI"]
    assert config["mlflow"]["default_permission"] == MLFLOW_DEFAULT_PERMISSION
    # Without the user store's URI the script stops before starting anything, naming the variable.
    del env["MLFLOW_AUTH_DATABASE_URI"]
    refused = subprocess.run(["sh", str(MLFLOW_ENTRYPOINT)], env=env, capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "MLFLOW_AUTH_DATABASE_URI" in refused.stderr


def _shipped_auth_keys() -> set[str]:
    """The keys of the basic_auth.ini MLflow ships, commented-out ones included."""
    spec = importlib.util.find_spec("mlflow")
    assert spec and spec.origin
    shipped = Path(spec.origin).parent / "server" / "auth" / "basic_auth.ini"
    return set(re.findall(r"^#?\s*([a-z_]+)\s*=", shipped.read_text(), re.MULTILINE))


def _dockerignore_patterns() -> list[str]:
    lines = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = prefixes + [f"x/{prefix}" for prefix in prefixes]
        if any(fnmatch.fnmatch(path, body.replace("**/", "*/")) or fnmatch.fnmatch(path, body) for path in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_copy_and_drops_state_and_secrets() -> None:
    patterns = _dockerignore_patterns()
    for path in DOCKER_DIR.glob("*.Dockerfile"):
        for stage in parse_dockerfile(path):
            for copy in stage.all("COPY"):
                words = [word for word in copy.arguments.split() if not word.startswith("--")]
                if copy.arguments.startswith("--from="):
                    continue
                for source in words[:-1]:
                    assert (PROJECT_ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
                    assert not _ignored(source, patterns), f"{path.name} copies {source}, which .dockerignore drops"
    for kept_out in (".venv", "var", ".git", "deploy/.env", "tests", "shared/x/model.onnx", "a/__pycache__"):
        assert _ignored(kept_out, patterns), f".dockerignore lets {kept_out} into the build context"
