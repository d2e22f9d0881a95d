"""nginx in front of the services: render the one configuration (deploy/nginx/*.template) and run nginx as a
managed process without root (its own prefix, pid, temp folders and logs under a state folder).

uvicorn cannot cut off a client that sends half its headers, or a Content-Length and no body; nginx can
(``client_header_timeout``, ``client_body_timeout``). The services' in-process limits stay as the second line.
Every number nginx enforces that a service also knows (largest body, longest wait) is derived from that
service's own settings, so the two lines cannot drift apart. The launcher and the tests render the same files.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.processes import LOOPBACK, ManagedProcess, loopback_url, start_process
from shared.kit.errors import DEFAULT_RETRY_AFTER_S
from shared.kit.service import INTERNAL_KEEPALIVE_S
from shared.kit.uploads import MULTIPART_OVERHEAD_BYTES

TEMPLATE_DIR = Path(__file__).resolve().parent / "nginx"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# nginx waits this much longer than the longest wait any service allows itself, so that a service's own
# timeout answer (a 503 in the project's error body) always reaches the client before nginx gives up.
READ_TIMEOUT_MARGIN_S = 10.0


class NginxSettings(BaseSettings):
    """The client-facing timeouts, read from ``BT_NGINX_*`` variables; bad values stop the launcher."""

    model_config = SettingsConfigDict(env_prefix="BT_NGINX_", extra="ignore")

    enabled: bool = Field(True, description="The launcher puts nginx in front of the services when it is installed.")
    binary: str = Field("nginx", description="The nginx executable (a name on PATH or a path).")
    client_header_timeout_s: float = Field(
        10.0, gt=0, description="Longest time to receive a request's whole header; then the connection is closed."
    )
    client_body_timeout_s: float = Field(
        15.0, gt=0, description="Longest silence between two reads of a request body; then the request ends (408)."
    )
    send_timeout_s: float = Field(30.0, gt=0, description="Longest time a client may take to accept an answer.")
    keepalive_timeout_s: float = Field(15.0, gt=0, description="Idle seconds a client's keep-alive connection lasts.")
    connect_timeout_s: float = Field(3.0, gt=0, description="Longest wait to connect to a service.")


@dataclass(frozen=True)
class ProxiedService:
    """One public port of nginx and the internal loopback port(s) of the service behind it."""

    name: str
    public_port: int
    upstream_ports: tuple[int, ...]
    max_body_bytes: int
    read_timeout_s: float

    @property
    def interchangeable_replicas(self) -> bool:
        # Inference answers are pure functions of the request (a prediction changes nothing): a request whose
        # replica failed before answering may be sent to another one. Nothing else is retried by nginx.
        return self.name == "inference"


def _service_settings() -> dict[str, Any]:
    """Each service's settings as its process would read them from this environment."""
    from services.explainer.config import Settings as ExplainerSettings
    from services.gateway.config import Settings as GatewaySettings
    from services.inference.config import Settings as InferenceSettings
    from services.training.config import TrainingSettings

    return {
        "gateway": GatewaySettings(),
        "inference": InferenceSettings(),
        "explainer": ExplainerSettings(),
        "training": TrainingSettings(),
    }


def largest_body_bytes(name: str, settings: Any) -> int:
    """The largest request body service ``name`` accepts with ``settings``: nginx refuses anything larger."""
    one_file = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES if hasattr(settings, "max_upload_bytes") else 0
    if name == "gateway":
        batch = settings.max_batch_files * settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        # A pushed study (POST /v1/studies) has its own limit.
        pushed = settings.dicomweb_max_push_bytes
        return max(one_file, batch, pushed)
    if name == "inference":
        # Pixel batches (the explainer's) and Open Inference Protocol bodies have their own limit.
        return max(one_file, settings.max_pixel_batch_bytes)
    if name == "training":
        return int(settings.max_body_bytes)
    return one_file


def longest_wait_s(all_settings: Iterable[Any]) -> float:
    """The longest timeout any service allows itself (every ``*_timeout_s`` setting), plus nginx's margin."""
    waits = [
        float(value)
        for settings in all_settings
        for field, value in settings.model_dump().items()
        if field.endswith("timeout_s") and isinstance(value, int | float)
    ]
    return max(waits, default=0.0) + READ_TIMEOUT_MARGIN_S


def proxied_services(
    public_ports: dict[str, int],
    upstream_ports: dict[str, tuple[int, ...]],
    service_settings: dict[str, Any] | None = None,
) -> list[ProxiedService]:
    """The services named in ``public_ports``, with limits derived from their settings (by default as each
    service reads them from this environment; ``service_settings`` replaces some)."""
    all_settings = {**_service_settings(), **(service_settings or {})}
    read_timeout_s = longest_wait_s(all_settings.values())
    return [
        ProxiedService(name, port, upstream_ports[name], largest_body_bytes(name, all_settings[name]), read_timeout_s)
        for name, port in public_ports.items()
    ]


def _duration(seconds: float) -> str:
    # nginx times are integers with a unit; milliseconds keep sub-second test settings exact.
    return f"{round(seconds * 1000)}ms"


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}``; a name without a value is an error, never left in the output."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - values.keys())
    if missing:
        raise KeyError(f"no value for {', '.join(missing)} in the nginx template")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _render_service(service: ProxiedService) -> str:
    servers = "\n".join(
        f"        server {LOOPBACK}:{port} max_fails=1 fail_timeout=5s;" for port in service.upstream_ports
    )
    retry_on = "error timeout non_idempotent" if service.interchangeable_replicas else "off"
    values = {
        "name": service.name,
        "listen": f"{LOOPBACK}:{service.public_port}",
        "upstream_count": str(len(service.upstream_ports)),
        "upstream_servers": servers,
        "upstream_keepalive": _duration(INTERNAL_KEEPALIVE_S),
        "max_body_bytes": str(service.max_body_bytes),
        "read_timeout": _duration(service.read_timeout_s),
        "read_timeout_text": f"{service.read_timeout_s:g} s",
        "next_upstream": retry_on,
        "retry_after_s": str(DEFAULT_RETRY_AFTER_S),
    }
    return fill((TEMPLATE_DIR / "service.conf.template").read_text(), values)


def _user_line() -> str:
    # Started by root, nginx would run its workers as "nobody", who cannot write the temp folders under a
    # state folder that only root can enter: they run as the launcher's user, like the services.
    if os.geteuid() != 0:
        return "# (not root: the workers run as the launcher's user)"
    return f"user {pwd.getpwuid(os.geteuid()).pw_name};"


def render(services: list[ProxiedService], state_dir: Path, settings: NginxSettings) -> str:
    """The whole nginx.conf for ``services``, everything nginx writes kept under ``state_dir``."""
    values = {
        "user": _user_line(),
        "state_dir": str(state_dir.resolve()),
        "client_header_timeout": _duration(settings.client_header_timeout_s),
        "client_body_timeout": _duration(settings.client_body_timeout_s),
        "send_timeout": _duration(settings.send_timeout_s),
        "keepalive_timeout": _duration(settings.keepalive_timeout_s),
        "proxy_connect_timeout": _duration(settings.connect_timeout_s),
        "servers": "\n".join(_render_service(service) for service in services),
    }
    return fill((TEMPLATE_DIR / "nginx.conf.template").read_text(), values)


def nginx_binary(settings: NginxSettings) -> str | None:
    """The nginx executable, or None when it is not installed (Debian's lives in /usr/sbin)."""
    return shutil.which(settings.binary) or shutil.which(settings.binary, path="/usr/sbin:/usr/local/sbin")


def write_config(services: list[ProxiedService], state_dir: Path, settings: NginxSettings) -> Path:
    """Render the configuration into ``state_dir`` with the folders nginx writes to; returns its path."""
    for folder in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    config = state_dir / "nginx.conf"
    config.write_text(render(services, state_dir, settings))
    return config


def nginx_command(binary: str, state_dir: Path, config: Path) -> list[str]:
    """nginx in the foreground (a managed process), its prefix and early error log in the state folder."""
    state = str(state_dir.resolve())
    return [binary, "-p", state, "-c", str(config.resolve()), "-e", f"{state}/error.log", "-g", "daemon off;"]


def check_config(binary: str, state_dir: Path, config: Path) -> None:
    """``nginx -t`` on the rendered file: a bad value fails here, with nginx's own message."""
    import subprocess

    command = [*nginx_command(binary, state_dir, config)[:-2], "-t", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"nginx refused {config}:\n{result.stderr.strip()}")


def start_nginx(
    services: list[ProxiedService],
    state_dir: Path,
    log_path: Path,
    settings: NginxSettings | None = None,
    health_path: str = "/healthz",
    timeout: float = 30.0,
) -> ManagedProcess:
    """nginx proxying each service's public port to its internal port(s); started once the first service's
    ``health_path`` answers through it."""
    settings = settings or NginxSettings()
    binary = nginx_binary(settings)
    if binary is None:
        raise RuntimeError(f"nginx is not installed (looked for {settings.binary!r}; set BT_NGINX_BINARY)")
    state_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(services, state_dir, settings)
    check_config(binary, state_dir, config)
    url = loopback_url(services[0].public_port)
    return start_process(
        "nginx", nginx_command(binary, state_dir, config), dict(os.environ), log_path, url, health_path, timeout
    )


# -- the launcher's front: nginx on the public ports, the services on internal ones -------------------------------

PROXIED_SERVICES = ("gateway", "inference", "training", "explainer")
# Behind nginx, a service listens this far above its public port (8100-8103 for the default 8000-8003); inference
# replicas 2..N then sit at 8111, 8112, ... (deploy/replicas.py counts from replica 1's port).
INTERNAL_PORT_OFFSET = 100


def front_unavailable(settings: NginxSettings | None = None) -> str | None:
    """Why the launcher cannot put nginx in front (turned off, or not installed); None when it can."""
    settings = settings or NginxSettings()
    if not settings.enabled:
        return "BT_NGINX_ENABLED is false"
    if nginx_binary(settings) is None:
        return f"nginx is not installed ({settings.binary!r} not found; Debian: apt-get install nginx)"
    return None


def internal_ports(public_ports: dict[str, int]) -> dict[str, int]:
    """Where each proxied service listens behind nginx; other processes (MLflow) keep their public port."""
    return {
        name: port + INTERNAL_PORT_OFFSET if name in PROXIED_SERVICES else port for name, port in public_ports.items()
    }


def start_front(
    public_ports: dict[str, int], service_ports: dict[str, int], inference_ports: list[int], state_dir: Path
) -> ManagedProcess:
    """nginx on every proxied service's public port, in front of its internal port (every inference replica's)."""
    upstreams: dict[str, tuple[int, ...]] = {name: (service_ports[name],) for name in PROXIED_SERVICES}
    upstreams["inference"] = tuple(inference_ports)
    services = proxied_services({name: public_ports[name] for name in PROXIED_SERVICES}, upstreams)
    return start_nginx(services, state_dir / "nginx", state_dir / "logs" / "nginx.log")
