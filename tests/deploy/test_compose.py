"""deploy/compose.yaml: parsed by the real `docker-compose config` (no engine needed), then checked against the
code: every variable a container of ours gets is one its service reads, every URL names a compose service on the
port it listens on, health checks wait on what the services serve, secrets come only from the .env file, and the
compose nginx runs deploy/nginx's templates (rendered, up to date, and accepted by `nginx -t`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from deploy.docker.render_nginx import CONTAINER_STATE_DIR, GATEWAY_UPSTREAM, OUTPUT, render
from deploy.nginx import NginxSettings, nginx_binary
from deploy.postgres import DRIVER_SCHEME
from deploy.processes import PROJECT_ROOT
from services.training.cli import build_parser
from shared.core.dataset import discover
from tests.deploy.contracts import (
    RUNTIME_VARIABLES,
    SERVICES,
    host_allowed,
    mlflow_container_variables,
    parse_dockerfile,
    pyproject,
    service_contract,
    split_list,
)

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_TEMPLATE = DEPLOY / "compose.env.template"
REQUIRED_SERVICES = {
    "postgres",
    "minio",
    "minio-create-bucket",
    "mlflow",
    "train",
    "inference",
    "explainer",
    "gateway",
    "nginx",
}
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
_URL = re.compile(r"https?://([a-z0-9-]+):(\d+)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as `docker-compose config` resolves it with the committed template as .env."""
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is not installed (Debian's docker-compose package)"
    result = subprocess.run(
        [docker_compose, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_TEMPLATE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def image_service(spec: dict[str, Any]) -> str | None:
    """Which Dockerfile of deploy/docker builds this container's image ("gateway", "mlflow", ...)."""
    image = str(spec.get("image", ""))
    match = re.fullmatch(r"bt-([a-z]+):\S+", image)
    return match.group(1) if match else None


def container_port(name: str, services: dict[str, Any]) -> int | None:
    """The port a compose service listens on, from its image's Dockerfile (EXPOSE)."""
    built = image_service(services.get(name, {}))
    if built is None:
        return None
    stage = parse_dockerfile(DEPLOY / "docker" / f"{built}.Dockerfile")[-1]
    (expose,) = stage.all("EXPOSE")
    return int(expose.arguments)


def template_variables() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_TEMPLATE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)]
    return dict(pairs)


def test_the_stack_has_every_part_the_issue_names(services: dict[str, Any]) -> None:
    assert services.keys() >= REQUIRED_SERVICES
    assert services["inference"]["deploy"]["replicas"] == 2
    assert "ports" not in services["inference"], "replicas cannot share a published port"
    published = {name for name, spec in services.items() if spec.get("ports")}
    assert published <= {"nginx", "mlflow"}, f"only nginx is public (and MLflow on loopback): {published}"
    # Short form "127.0.0.1:5000:5000/tcp" or the long form, depending on the docker-compose version.
    for port in services["mlflow"].get("ports", []):
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"MLflow is published beyond loopback: {port}"


def test_every_variable_comes_from_the_template_and_every_template_line_is_used() -> None:
    raw = COMPOSE_FILE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", raw))
    defined = set(template_variables())
    assert used - defined == set(), f"compose.yaml uses {sorted(used - defined)}, not in the template"
    assert defined - used == set(), f"the template defines {sorted(defined - used)}, unused by compose.yaml"


def test_secrets_come_only_from_the_env_file() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, spec in raw["services"].items():
        environment = spec.get("environment", {})
        for key, value in environment.items() if isinstance(environment, dict) else []:
            # *_API_TOKENS name a file of token hashes (a compose secret), not a token.
            if any(word in key for word in SECRET_WORDS) and not key.endswith(("_ID", "_API_TOKENS")):
                assert str(value).startswith("${"), f"{name}: {key} is written in compose.yaml, not taken from .env"
            # A URI with credentials in it takes them from .env too.
            if "@" in str(value):
                assert re.search(r"//\$\{\w+\}:\$\{\w+\}@", str(value)), f"{name}: {key} holds literal credentials"
    for key, value in template_variables().items():
        if any(word in key for word in SECRET_WORDS):
            assert "CHANGE_ME" in value, f"the template gives {key} a value that looks real"


@pytest.mark.parametrize("service", SERVICES)
def test_our_containers_get_only_variables_their_service_reads(service: str, services: dict[str, Any]) -> None:
    contract = service_contract(service)
    containers = {name: spec for name, spec in services.items() if image_service(spec) == service}
    assert containers, f"no compose service runs the {service} image"
    for name, spec in containers.items():
        environment = spec.get("environment", {})
        unread = sorted(key for key in environment if key not in RUNTIME_VARIABLES and not contract.reads(key))
        assert not unread, f"compose service {name} sets {unread}; {contract.settings_class} never reads them"
        hosts = environment.get(f"{contract.env_prefix}ALLOWED_HOSTS")
        allowed = split_list(hosts) if hosts else list(contract.default_allowed_hosts)
        # Others call it by its compose name (the one-shot job serves nothing); its HEALTHCHECK calls 127.0.0.1.
        if name != "train":
            assert host_allowed(name, allowed), (name, allowed)
        assert host_allowed("127.0.0.1", allowed)


def test_mlflow_runs_basic_auth_on_postgresql_and_minio(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    environment = mlflow["environment"]
    unread = sorted(set(environment) - mlflow_container_variables())
    assert not unread, f"the MLflow container gets {unread}, which neither MLflow nor boto3 reads"
    # The driver named, as the launcher names it: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3.
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        assert urlsplit(environment[key]).scheme == DRIVER_SCHEME, environment[key]
        assert urlsplit(environment[key]).hostname == "postgres"
    assert environment["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert urlsplit(environment["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    bucket = services["minio-create-bucket"]
    assert "mc mb" in " ".join(bucket["command"]) and bucket["restart"] == "no"
    bucket_name = environment["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    assert bucket["environment"]["MLFLOW_BUCKET"] == bucket_name


def test_every_url_names_a_service_on_the_port_it_listens_on(services: dict[str, Any]) -> None:
    checked = 0
    for name, spec in services.items():
        for key, value in (spec.get("environment") or {}).items():
            for host, port in _URL.findall(str(value)):
                expected = container_port(host, services)
                if expected is not None:
                    assert int(port) == expected, f"{name}: {key} calls {host}:{port}; {host} listens on {expected}"
                    checked += 1
    assert checked >= 4


def test_health_checks_and_dependencies(services: dict[str, Any]) -> None:
    for name, spec in services.items():
        for target, condition in (spec.get("depends_on") or {}).items():
            wanted = condition["condition"]
            assert wanted in {"service_healthy", "service_completed_successfully"}, f"{name} -> {target}: {wanted}"
            target_spec = services[target]
            if wanted == "service_healthy":
                built = image_service(target_spec)
                has_image_check = built and parse_dockerfile(DEPLOY / "docker" / f"{built}.Dockerfile")[-1].all(
                    "HEALTHCHECK"
                )
                assert "healthcheck" in target_spec or has_image_check, f"{target} has no health check to wait on"
            else:
                assert target_spec.get("restart") == "no", f"{target} is a one-shot job: restart must be 'no'"
    gateway_path = urlsplit(services["nginx"]["healthcheck"]["test"][-1]).path
    assert gateway_path in service_contract("gateway").get_paths
    # nginx passes the client's Host on: the gateway must answer to the public name.
    gateway_hosts = split_list(services["gateway"]["environment"]["BT_GATEWAY_ALLOWED_HOSTS"])
    assert host_allowed(template_variables()["BT_PUBLIC_HOST"], gateway_hosts)


def _mount(volume: str | dict[str, Any]) -> tuple[str, bool]:
    """(target, read-only) of a volume in the short ("src:/data:ro") or the long form."""
    if isinstance(volume, dict):
        return volume["target"], bool(volume.get("read_only"))
    parts = volume.split(":")
    return parts[1], parts[2:] == ["ro"]


def _source(volume: str | dict[str, Any]) -> str:
    return str(volume["source"]) if isinstance(volume, dict) else volume.split(":")[0]


def test_training_job_command_is_the_cli_and_its_data_is_mounted(services: dict[str, Any]) -> None:
    train = services["train"]
    command = train["command"]
    assert command[0] == "bt-train"
    assert pyproject()["project"]["scripts"]["bt-train"] == f"{build_parser.__module__}:main"
    options = build_parser().parse_args(command[1:])
    mounts = dict(_mount(volume) for volume in train["volumes"])
    assert mounts.get(str(options.data)) is True, f"the data folder {options.data} is not mounted read-only"
    # The template's data folder is one the training code reads (the embedded sample).
    (source,) = [_source(volume) for volume in train["volumes"] if _mount(volume)[0] == str(options.data)]
    assert discover(source).train.paths, f"{source} holds no training images"
    weights = Path(train["environment"]["BT_TRAINING_MOBILENETV2_WEIGHTS"])
    assert str(weights.parent) in mounts


def test_compose_nginx_config_is_the_rendered_template() -> None:
    assert OUTPUT.read_text() == render(), "deploy/docker/nginx.conf is stale: python -m deploy.docker.render_nginx"
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = raw["services"]["nginx"]["volumes"]
    assert f"./docker/{OUTPUT.name}:/etc/nginx/bt/nginx.conf:ro" in mounts
    assert f"gateway:{service_contract('gateway').default_port}" == GATEWAY_UPSTREAM


def test_nginx_accepts_the_compose_config(tmp_path: Path) -> None:
    """`nginx -t` on the compose file, with the container's names and folders mapped to this machine's."""
    binary = nginx_binary(NginxSettings.model_construct())
    assert binary, "nginx is not installed (Debian's nginx package)"
    text = OUTPUT.read_text().replace(GATEWAY_UPSTREAM, "127.0.0.1:8000").replace(CONTAINER_STATE_DIR, str(tmp_path))
    (tmp_path / "tmp").mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    result = subprocess.run(
        [binary, "-t", "-q", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
