"""`python -m deploy.stack up|down|status`: the whole stack on 127.0.0.1.

`up` starts an MLflow server (SQLite + local artifacts under the state folder); an empty registry gets the
repository's pretrained bundle (deploy/pretrained.py); families still missing (all with `--retrain`) are trained on
the data folder (the embedded sample by default); then it starts
the inference, explainer, training and gateway services and prints their URLs; if one does not come
up, it stops the others and says why. Processes keep running after the command returns; `down` stops them.

When nginx is installed it takes the public ports (deploy/nginx.py: client timeouts and body limits) and the
services listen 100 ports above them; without it, the services bind the public ports. `BT_MLFLOW_BACKEND_URI`
(postgresql://...) and `BT_MLFLOW_ARTIFACTS_DESTINATION` (s3://..., with `MLFLOW_S3_ENDPOINT_URL`) replace
MLflow's SQLite file and artifact folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from deploy.credentials import (
    API_TOKEN_ENV,
    API_TOKEN_FILE,
    MLFLOW_PASSWORD_FILE,
    StackSecrets,
    mlflow_auth_from_env,
    stack_secrets,
)
from deploy.nginx import PROXIED_SERVICES, front_unavailable, internal_ports, start_front
from deploy.orthanc import orthanc_port, start_stack_pacs
from deploy.postgres import AUDIT_DATABASE, stack_port, start_postgres, with_driver
from deploy.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    ManagedProcess,
    loopback_url,
    port_in_use,
    start_mlflow,
    start_service,
    stop_process_group,
)
from deploy.replicas import gateway_env, replica_count, replica_name, replica_ports, start_replicas
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.kit.schemas import MODEL_FAMILIES, registered_name

DEFAULT_PORTS = {"gateway": 8000, "inference": 8001, "training": 8002, "explainer": 8003, "mlflow": 5000}


def _ports() -> dict[str, int]:
    return {name: int(os.environ.get(f"BT_{name.upper()}_PORT", port)) for name, port in DEFAULT_PORTS.items()}


def _registered_families(tracking_uri: str, auth: httpx.Auth | None = None) -> set[str]:
    url = f"{tracking_uri}/api/2.0/mlflow/registered-models/search"
    # MLflow answers 401 to anonymous calls: the stack's admin, or MLflow's standard variables.
    response = httpx.get(url, params={"max_results": 100}, auth=auth or mlflow_auth_from_env(), trust_env=False)
    response.raise_for_status()
    names = {model["name"] for model in response.json().get("registered_models", [])}
    return {family for family in MODEL_FAMILIES if registered_name(family) in names}


def up(
    state_dir: Path,
    data: Path | None,
    retrain: bool,
    search: str = "none",
    replicas: int = 1,
    postgres: bool = False,
    pacs: bool = False,
) -> int:
    public_ports = _ports()
    # nginx takes the public ports and the services move to internal ones; without nginx they bind the public ones.
    no_front = front_unavailable()
    ports = public_ports if no_front else internal_ports(public_ports)
    front_ports = {} if no_front else {f"nginx-{name}": public_ports[name] for name in PROXIED_SERVICES}
    inference_ports = {replica_name(n): port for n, port in enumerate(replica_ports(ports["inference"], replicas))}
    wanted = {**ports, **inference_ports, **front_ports, **({"postgres": stack_port()} if postgres else {})}
    wanted.update({"orthanc": orthanc_port()} if pacs else {})
    busy = [f"{name} ({port})" for name, port in wanted.items() if port_in_use(port)]
    if busy:
        print(f"ports already in use: {', '.join(busy)}. Is the stack up already? Try: python -m deploy.stack down")
        return 1
    logs = state_dir / "logs"
    started: list[ManagedProcess] = []
    try:
        secrets = stack_secrets(state_dir)
        backend_uri = audit_uri = None
        if postgres:
            print(
                f"starting PostgreSQL on {LOOPBACK}:{stack_port()} (data in {state_dir / 'postgres'}) ...", flush=True
            )
            cluster = start_postgres(state_dir / "postgres", stack_port(), logs / "postgres.log")
            started.append(cluster.process)
            _save(state_dir, started)
            backend_uri = cluster.uri
            audit_uri = cluster.dsn_of(AUDIT_DATABASE)
        print(f"starting MLflow on {LOOPBACK}:{ports['mlflow']} (state in {state_dir}) ...", flush=True)
        mlflow = start_mlflow(
            state_dir / "mlflow",
            ports["mlflow"],
            logs / "mlflow.log",
            credentials=secrets.mlflow,
            **_mlflow_stores(backend_uri),
        )
        started.append(mlflow)
        _save(state_dir, started)
        env = {**_registry_env(state_dir, mlflow.url), **_security_env(state_dir, secrets, data)}
        _train_missing(env, data, retrain, search)
        service_env = {**env, **_service_urls(ports), **gateway_env(ports["inference"], replicas)}
        service_env.update(_audit_env(state_dir, audit_uri))

        def keep(process: ManagedProcess) -> None:
            started.append(process)
            _save(state_dir, started)

        start_replicas(service_env, ports["inference"], replicas, state_dir, keep)
        # A PACS beside the stack (docs/hospital.md): the gateway gets its DICOMweb URL and user.
        pacs_env = start_stack_pacs(state_dir, logs, keep).gateway_env() if pacs else {}
        for name in ("explainer", "training", "gateway"):
            # The API token goes to the service whose routes need it, no further.
            own = {API_TOKEN_ENV: secrets.api_token} if name == "training" else {}
            own = {**own, **pacs_env} if name == "gateway" else own
            # The gateway runs as `python -m services.gateway`: its worker processes (shared/kit/workers.py).
            as_module = name == "gateway"
            env_of_service = {**service_env, **own}
            process = start_service(name, ports[name], env_of_service, logs / f"{name}.log", as_module=as_module)
            started.append(process)
            _save(state_dir, started)
        if no_front:
            print(f"no nginx in front ({no_front}): the services bind the public ports, without client timeouts")
        else:
            started.append(start_front(public_ports, ports, list(inference_ports.values()), state_dir))
            _save(state_dir, started)
    except (RuntimeError, TimeoutError) as exc:
        # Half a stack helps nobody and would hold the ports: stop what did start.
        print(f"the stack did not come up: {exc}\nstopping what was started ...", flush=True)
        down(state_dir)
        return 1
    _print_urls(public_ports, logs)
    _print_secrets(secrets)
    return 0


def _mlflow_stores(backend_uri: str | None = None) -> dict[str, str]:
    """MLflow's backend store and artifact destination when set (``BT_MLFLOW_BACKEND_URI``, e.g. postgresql://...;
    ``BT_MLFLOW_ARTIFACTS_DESTINATION``, e.g. s3://bucket/mlflow, with ``MLFLOW_S3_ENDPOINT_URL`` and the AWS
    variables in this environment, which the MLflow server inherits); unset: SQLite and a folder in the state dir.
    ``backend_uri`` (the stack's own PostgreSQL cluster) wins over the variable."""
    stores: dict[str, str] = {}
    if backend := backend_uri or os.environ.get("BT_MLFLOW_BACKEND_URI"):
        stores["backend_uri"] = with_driver(backend)
    if destination := os.environ.get("BT_MLFLOW_ARTIFACTS_DESTINATION"):
        stores["artifacts_destination"] = destination
    return stores


def _security_env(state_dir: Path, secrets: StackSecrets, data: Path | None) -> dict[str, str]:
    """MLflow's credentials (for training and inference), and the folders a training request may name."""
    roots = [SAMPLE_DATA_DIR, state_dir / "data", *([data.resolve()] if data is not None else [])]
    return {**secrets.mlflow.client_env(), "BT_TRAINING_DATA_ROOTS": ",".join(str(root) for root in roots)}


def _print_secrets(secrets: StackSecrets) -> None:
    """Where the secrets are kept; never their values."""
    made = f" (generated now: {', '.join(secrets.created)})" if secrets.created else ""
    token, password = secrets.kept[API_TOKEN_FILE], secrets.kept[MLFLOW_PASSWORD_FILE]
    print(
        f"Secrets{made}:\n"
        f"  API token        {token}\n"
        "                   POST /v1/training-runs needs 'Authorization: Bearer <token>'\n"
        f"  MLflow password  {password}\n"
        f"                   user '{secrets.mlflow.username}': the MLflow UI asks for it"
    )


def _audit_env(state_dir: Path, postgres_uri: str | None) -> dict[str, str]:
    """One audit trail for the gateway and inference (docs/reliability.md): the stack's PostgreSQL cluster when it
    runs one, else a SQLite file in the state folder (``bt-audit --uri ... verify`` reads either)."""
    uri = postgres_uri or f"sqlite:///{(state_dir / 'audit' / 'trail.sqlite').resolve()}"
    return {"BT_GATEWAY_AUDIT_URI": uri, "BT_INFERENCE_AUDIT_URI": uri}


def _registry_env(state_dir: Path, tracking_uri: str) -> dict[str, str]:
    return {
        # Every name a service reads the registry from: the stack's own server wins over the shell's.
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BT_TRAINING_TRACKING_URI": tracking_uri,
        "BT_INFERENCE_TRACKING_URI": tracking_uri,
        "BT_GATEWAY_MLFLOW_UI_URL": tracking_uri,
        "BT_TRAINING_CACHE_DIR": str(state_dir / "cache"),
        "BT_TRAINING_REPORT_DIR": str(state_dir / "reports"),
    }


def _train_missing(env: dict[str, str], data: Path | None, retrain: bool, search: str) -> None:
    """Train and register the families the registry lacks (all of them with ``retrain``)."""
    auth = httpx.BasicAuth(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    registered = _registered_families(env["MLFLOW_TRACKING_URI"], auth)
    if not retrain and data is None and not registered and _register_pretrained(env):
        registered = _registered_families(env["MLFLOW_TRACKING_URI"], auth)
    families = list(MODEL_FAMILIES) if retrain else [family for family in MODEL_FAMILIES if family not in registered]
    if not families:
        return
    print(f"training {', '.join(families)} on {data or 'the embedded sample'} ...", flush=True)
    # Fixed parameters on the sample: a search on 120 images would only add minutes.
    # --guard: the stack refuses non-MRI uploads only with a guard; the promotion gate keeps a better one in place.
    command = [
        sys.executable, "-m", "services.training.cli", "--families", ",".join(families), "--search", search, "--guard",
    ]  # fmt: skip
    if data is not None:
        command += ["--data", str(data.resolve())]
    result = subprocess.run(command, env={**os.environ, **env}, cwd=PROJECT_ROOT, check=False)
    if result.returncode != 0:
        print("training did not register every family; the stack starts with what is registered.")


def _register_pretrained(env: dict[str, str]) -> bool:
    """Register the repository's pretrained bundle (deploy/pretrained.py) into an empty registry; False when there
    is no bundle or it was refused (a file differs from its manifest), and the sample is trained on instead."""
    from deploy.bundle import BUNDLE_DIR, MANIFEST_FILE

    if not (BUNDLE_DIR / MANIFEST_FILE).is_file():
        print(f"no pretrained bundle in {BUNDLE_DIR}: training on the embedded sample instead", flush=True)
        return False
    print(f"registering the pretrained bundle {BUNDLE_DIR} ...", flush=True)
    command = [sys.executable, "-m", "deploy.pretrained", "register", "--tracking-uri", env["MLFLOW_TRACKING_URI"]]
    result = subprocess.run(command, env={**os.environ, **env}, cwd=PROJECT_ROOT, check=False)
    if result.returncode != 0:
        print("the pretrained bundle was not registered (see above): training on the embedded sample instead")
    return result.returncode == 0


def _service_urls(ports: dict[str, int]) -> dict[str, str]:
    """Where each service finds the services it calls."""
    return {
        "BT_GATEWAY_INFERENCE_URL": loopback_url(ports["inference"]),
        "BT_GATEWAY_EXPLAINER_URL": loopback_url(ports["explainer"]),
        "BT_EXPLAINER_INFERENCE_URL": loopback_url(ports["inference"]),
    }


def _print_urls(ports: dict[str, int], logs: Path) -> None:
    gateway = loopback_url(ports["gateway"])
    print(
        "\nThe stack is up:\n"
        f"  web page        {gateway}/\n"
        f"  public API docs {gateway}/docs\n"
        f"  inference       {loopback_url(ports['inference'])}/docs\n"
        f"  training        {loopback_url(ports['training'])}/docs\n"
        f"  explainer       {loopback_url(ports['explainer'])}/docs\n"
        f"  MLflow UI       {loopback_url(ports['mlflow'])}\n"
        f"  logs            {logs}\n"
        f"Try: curl -F file=@shared/sample_data/glioma/glioma_000.jpg '{gateway}/v1/predict?model=cnn'\n"
        "Stop: .venv/bin/python -m deploy.stack down"
    )


def _save(state_dir: Path, processes: list[ManagedProcess]) -> None:
    state = {p.name: {"pid": p.process.pid, "url": p.url, "log": str(p.log_path)} for p in processes}
    (state_dir / "stack.json").write_text(json.dumps(state, indent=2))


def down(state_dir: Path) -> int:
    state_file = state_dir / "stack.json"
    if not state_file.exists():
        print("nothing to stop (no stack.json)")
        return 0
    for name, entry in reversed(list(json.loads(state_file.read_text()).items())):
        stop_process_group(int(entry["pid"]))
        print(f"stopped {name}")
    state_file.unlink()
    return 0


def status(state_dir: Path) -> int:
    state_file = state_dir / "stack.json"
    if not state_file.exists():
        print("not running")
        return 1
    healthy = True
    for name, entry in json.loads(state_file.read_text()).items():
        path = "/health" if name == "mlflow" else "/healthz"
        try:
            # PostgreSQL is not HTTP, Orthanc wants its user: up when their port takes connections.
            if entry["url"].startswith("postgresql://") or name == "orthanc":
                ok = port_in_use(int(entry["url"].rsplit(":", 1)[1]))
            else:
                ok = httpx.get(entry["url"] + path, timeout=2.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            ok = False
        healthy &= ok
        print(f"{name:<10} {'up  ' if ok else 'DOWN'} {entry['url']}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("BT_STATE_DIR", "var")))
    parser.add_argument("--data", type=Path, help="data folder to train on (default: the embedded sample)")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train on the sample (or --data) even when models are registered; without it an empty registry "
        "gets the pretrained bundle (shared/pretrained_bundle/)",
    )
    parser.add_argument("--search", choices=["none", "quick", "seed"], default="none", help="search mode of training")
    parser.add_argument(
        "--replicas", type=replica_count, default=1, help="inference replicas behind the gateway (deploy/replicas.py)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="MLflow's backend store on a PostgreSQL cluster of the stack's own, in <state>/postgres on "
        "BT_POSTGRES_PORT (5433); Debian's postgresql server package (deploy/postgres.py)",
    )
    parser.add_argument(
        "--pacs",
        action="store_true",
        help="Orthanc with its DICOMweb plugin beside the stack, on BT_ORTHANC_PORT (8042), data in <state>/orthanc, "
        "the gateway's DICOMweb routes wired to it (Debian's orthanc and orthanc-dicomweb; docs/hospital.md)",
    )
    args = parser.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "up":
        return up(
            args.state_dir.resolve(), args.data, args.retrain, args.search, args.replicas, args.postgres, args.pacs
        )
    if args.command == "down":
        return down(args.state_dir)
    return status(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
