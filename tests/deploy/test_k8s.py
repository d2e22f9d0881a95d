"""deploy/k8s: the kustomize base and the local overlay rendered by the real `kubectl kustomize`, every resource
validated by kubernetes-validate against the Kubernetes schemas it ships (strict: unknown fields fail), then
checked against the code: probes on paths the services serve, ports they listen on, variables they read,
resource limits everywhere, the training Job's arguments accepted by the CLI, Ingress limits from the settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.docker.render_nginx import _default_settings
from deploy.nginx import NginxSettings, largest_body_bytes, longest_wait_s, route_limits
from deploy.postgres import DRIVER_SCHEME
from deploy.processes import PROJECT_ROOT
from services.training.cli import build_parser
from tests.deploy.contracts import (
    RUNTIME_VARIABLES,
    SERVICES,
    host_allowed,
    mlflow_container_variables,
    mlflow_health_paths,
    pyproject,
    service_contract,
    split_list,
)

K8S = PROJECT_ROOT / "deploy" / "k8s"
TREES = {"base": K8S / "base", "local": K8S / "overlays" / "local"}
SCHEMA_VERSION = kubernetes_validate.latest_version()
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
_URL = re.compile(r"https?://([a-z0-9-]+):(\d+)")


def kustomize(tree: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed"
    result = subprocess.run(
        [kubectl, "kustomize", str(TREES[tree])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(TREES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in resources if item["kind"] == kind}


def containers(resources: list[dict[str, Any]], kind: str = "Deployment") -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, container)
        for name, item in by_kind(resources, kind).items()
        for container in item["spec"]["template"]["spec"]["containers"]
    ]


def image_service(container: dict[str, Any]) -> str:
    match = re.fullmatch(r"(?:.*/)?bt-([a-z]+):\S+", container["image"])
    assert match, f"not one of this project's images: {container['image']}"
    return match.group(1)


def environment(container: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, str]:
    """Every variable the container gets: its ConfigMaps and Secrets (envFrom) and its own env."""
    config_maps, secrets = by_kind(resources, "ConfigMap"), by_kind(resources, "Secret")
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(config_maps[source["configMapRef"]["name"]]["data"])
        else:
            values.update(secrets[source["secretRef"]["name"]]["stringData"])
    values.update({item["name"]: item.get("value", "") for item in container.get("env", [])})
    return values


def container_port(container: dict[str, Any], name: str | int) -> int:
    if isinstance(name, int):
        return name
    (port,) = [item["containerPort"] for item in container["ports"] if item["name"] == name]
    return int(port)


def test_every_resource_is_valid_for_kubernetes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    tree, resources = rendered
    kinds = {item["kind"] for item in resources}
    wanted = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "Job",
        "Ingress",
    }
    assert wanted <= kinds, f"{tree} lacks {sorted(wanted - kinds)}"
    for item in resources:
        kubernetes_validate.validate(item, SCHEMA_VERSION, strict=True)


def test_the_validator_refuses_a_wrong_field() -> None:
    deployment = by_kind(kustomize("base"), "Deployment")["gateway"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)


def test_every_deployment_has_three_probes_and_resource_limits(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    for name, container in containers(resources):
        missing = [probe for probe in PROBES if probe not in container]
        assert not missing, f"{name} has no {missing}"
        resources_of = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources_of.get(bound, {}).keys(), f"{name} has no cpu/memory {bound}"
    for name, container in containers(resources, "Job"):
        assert {"cpu", "memory"} <= container.get("resources", {}).get("limits", {}).keys(), f"job {name}"


def test_probes_ports_and_variables_match_each_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    tree, resources = rendered
    seen = set()
    for name, container in containers(resources):
        service = image_service(container)
        if service == "mlflow":
            continue
        seen.add(service)
        contract = service_contract(service)
        env = environment(container, resources)
        unread = sorted(key for key in env if key not in RUNTIME_VARIABLES and not contract.reads(key))
        assert not unread, f"{tree}: {name} gets {unread}; {contract.settings_class} never reads them"
        port = int(env.get(contract.port_variable, contract.default_port))
        assert [item["containerPort"] for item in container["ports"]] == [port]
        hosts = env.get(f"{contract.env_prefix}ALLOWED_HOSTS")
        allowed = split_list(hosts) if hosts else list(contract.default_allowed_hosts)
        assert host_allowed(name, allowed), f"{name} is called by its Service name, which it refuses: {allowed}"
        for probe_name in PROBES:
            probe = container[probe_name]["httpGet"]
            assert probe["path"] in contract.get_paths, f"{name} {probe_name} asks {probe['path']}"
            assert container_port(container, probe["port"]) == port
            # The kubelet sends the pod IP as Host unless told otherwise: the trusted-host check would refuse it.
            headers = {item["name"]: item["value"] for item in probe.get("httpHeaders", [])}
            assert host_allowed(headers.get("Host", "10.0.0.1"), allowed), f"{name} {probe_name}: Host refused"
        readiness = container["readinessProbe"]["httpGet"]["path"]
        assert readiness == ("/readyz" if "/readyz" in contract.get_paths else "/healthz")
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert seen == set(SERVICES)


def test_mlflow_gets_only_what_mlflow_reads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    (container,) = [container for _, container in containers(resources) if image_service(container) == "mlflow"]
    unread = sorted(set(environment(container, resources)) - mlflow_container_variables())
    assert not unread, f"the MLflow pod gets {unread}, which neither MLflow nor boto3 reads"
    for probe_name in PROBES:
        assert container[probe_name]["httpGet"]["path"] in mlflow_health_paths()
    # Database URIs name psycopg2, as the launcher does: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3.
    env = environment(container, resources)
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        scheme = env[key].split("://")[0]
        assert scheme == DRIVER_SCHEME or scheme == "sqlite", f"{key}: {env[key]}"


def test_services_select_pods_and_urls_name_services(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    deployments = by_kind(resources, "Deployment")
    services = by_kind(resources, "Service")
    for name, service in services.items():
        selector = service["spec"]["selector"]
        (deployment,) = [
            d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        for port in service["spec"]["ports"]:
            assert container_port(container, port["targetPort"]), f"Service {name}: no port {port['targetPort']}"
    for config_map in by_kind(resources, "ConfigMap").values():
        for key, value in config_map["data"].items():
            for host, port in _URL.findall(value):
                assert host in services, f"{key} calls {host}, which no Service is"
                assert int(port) in [item["port"] for item in services[host]["spec"]["ports"]], f"{key}: {value}"


def test_inference_scales_on_cpu_and_keeps_one_pod_through_disruptions(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, resources = rendered
    (autoscaler,) = by_kind(resources, "HorizontalPodAutoscaler").values()
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert [metric["resource"]["name"] for metric in autoscaler["spec"]["metrics"]] == ["cpu"]
    (budget,) = by_kind(resources, "PodDisruptionBudget").values()
    pod_labels = by_kind(resources, "Deployment")["inference"]["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_training_job_runs_the_cli_with_arguments_it_accepts(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    ((_, container),) = containers(resources, "Job")
    assert image_service(container) == "training"
    (command,) = container["command"]
    assert pyproject()["project"]["scripts"][command] == f"{build_parser.__module__}:main"
    build_parser().parse_args(container["args"])  # exits (SystemExit) on an option the CLI does not have


def test_ingress_limits_are_the_services_own(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    ingresses = by_kind(resources, "Ingress")
    settings = _default_settings()
    limits = {route.location: route for route in route_limits("gateway", settings["gateway"])}
    prefix = "nginx.ingress.kubernetes.io/"
    # One file on every route but the batch, read whole first; the batch's body streamed (nothing on disk).
    expected = {"gateway": limits["= /v1/predict"], "gateway-batch": limits["= /v1/predict/batch"]}
    assert expected["gateway-batch"].max_body_bytes == largest_body_bytes("gateway", settings["gateway"])
    (batch_path,) = ingresses["gateway-batch"]["spec"]["rules"][0]["http"]["paths"]
    assert batch_path["path"] == "/v1/predict/batch" and batch_path["pathType"] == "Exact"
    wait = longest_wait_s(settings.values())
    (gateway,) = by_kind(resources, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"]
    gateway_hosts = split_list(environment(gateway, resources)["BT_GATEWAY_ALLOWED_HOSTS"])
    for name, route in expected.items():
        annotations = ingresses[name]["metadata"]["annotations"]
        assert annotations[f"{prefix}proxy-body-size"] == str(route.max_body_bytes)
        assert annotations[f"{prefix}proxy-request-buffering"] == ("off" if route.streamed else "on")
        assert annotations[f"{prefix}proxy-read-timeout"] == f"{wait:g}"
        assert annotations[f"{prefix}proxy-send-timeout"] == f"{wait:g}"
        assert annotations[f"{prefix}proxy-connect-timeout"] == f"{NginxSettings.model_construct().connect_timeout_s:g}"
        for rule in ingresses[name]["spec"]["rules"]:
            assert host_allowed(rule["host"], gateway_hosts), f"the gateway refuses its public name {rule['host']}"


def test_secrets_hold_only_template_values(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = rendered
    for name, secret in by_kind(resources, "Secret").items():
        for key, value in secret["stringData"].items():
            if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")):
                assert "CHANGE_ME" in value, f"Secret {name} holds a real-looking {key}"


def test_local_overlay_runs_one_replica_of_each() -> None:
    resources = kustomize("local")
    assert {item["metadata"].get("namespace") for item in resources if item["kind"] != "Namespace"} == {"bt-local"}
    for name, deployment in by_kind(resources, "Deployment").items():
        assert deployment["spec"].get("replicas", 1) == 1, f"{name} runs more than one replica locally"
    (autoscaler,) = by_kind(resources, "HorizontalPodAutoscaler").values()
    assert autoscaler["spec"]["minReplicas"] == 1
    (job_container,) = by_kind(resources, "Job")["train"]["spec"]["template"]["spec"]["containers"]
    data_dir = {item["name"]: item.get("value") for item in job_container["env"]}["BT_TRAINING_DATA_DIR"]
    # Where pip puts shared/sample_data in the image: the same place relative to site-packages as here.
    from shared.core.dataset import SAMPLE_DATA_DIR

    assert data_dir.endswith("site-packages/" + "/".join(SAMPLE_DATA_DIR.parts[-2:]))


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(unit):
            return float(quantity.removesuffix(unit)) * factor
    return float(quantity) / 2**20


def test_inference_memory_is_sized_from_the_measured_rss() -> None:
    """The request covers the resident memory the serving benchmark measured with the four models, the ensemble
    and the guard loaded in every worker (docs/benchmarks.md), and the limit leaves room for a second version
    loading beside them: a benchmark that finds more makes this fail until the manifest follows."""
    benchmarks = (PROJECT_ROOT / "docs" / "benchmarks.md").read_text()
    table_row = re.search(r"inference resident memory in all[^|]*\|\s*(\d+) MB", benchmarks)
    assert table_row, "docs/benchmarks.md no longer states inference's measured resident memory"
    measured_mib = int(table_row.group(1)) * 1e6 / 2**20
    (container,) = by_kind(kustomize("base"), "Deployment")["inference"]["spec"]["template"]["spec"]["containers"]
    assert _mebibytes(container["resources"]["requests"]["memory"]) >= measured_mib
    assert _mebibytes(container["resources"]["limits"]["memory"]) >= 2 * measured_mib
