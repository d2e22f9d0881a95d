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
from shared.kit.errors import DEFAULT_RETRY_AFTER_S, HTTP_STATUS, ErrorCode
from shared.kit.service import DEFAULT_MAX_JSON_BODY_BYTES, INTERNAL_KEEPALIVE_S
from shared.kit.uploads import MULTIPART_OVERHEAD_BYTES

TEMPLATE_DIR = Path(__file__).resolve().parent / "nginx"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# nginx waits this much longer than the longest wait any service allows itself, so that a service's own
# timeout answer (a 503 in the project's error body) always reaches the client before nginx gives up.
READ_TIMEOUT_MARGIN_S = 10.0
# The most a request body may put on nginx's disk: a route whose limit is at most this is read whole first
# (proxy_request_buffering on: a slow upload never holds a service), a larger one is streamed to its service, which
# counts it as it arrives (off: nginx keeps at most client_body_buffer_size of it, in memory).
MAX_SPOOLED_BODY_BYTES = 16 * 1024 * 1024


class NginxSettings(BaseSettings):
    """The client-facing timeouts, read from ``BT_NGINX_*`` variables; bad values stop the launcher."""

    model_config = SettingsConfigDict(env_prefix="BT_NGINX_", extra="ignore")

    enabled: bool = Field(True, description="The launcher puts nginx in front of the services when it is installed.")
    binary: str = Field("nginx", description="The nginx executable (a name on PATH or a path).")
    client_header_timeout_s: float = Field(
        10.0, gt=0, description="Longest time to receive a request's whole header; then the connection is closed."
    )
    client_body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest silence between two reads of a request body; then the request ends (408). Below 12 s, so "
        "a body trickled a byte at a time is cut off (the services also bound a whole body's reading).",
    )
    send_timeout_s: float = Field(30.0, gt=0, description="Longest time a client may take to accept an answer.")
    keepalive_timeout_s: float = Field(15.0, gt=0, description="Idle seconds a client's keep-alive connection lasts.")
    connect_timeout_s: float = Field(3.0, gt=0, description="Longest wait to connect to a service.")


@dataclass(frozen=True)
class RouteLimit:
    """One route's largest body: ``location`` is nginx's (``= /v1/predict``, ``~ ^/v2/models/.+/infer$``)."""

    location: str
    max_body_bytes: int
    kind: str  # what the route takes, for the configuration's comments: single upload, batch, explain, tensors

    @property
    def streamed(self) -> bool:
        """Whether the body goes to the service as it arrives instead of through nginx's temp folder."""
        return self.max_body_bytes > MAX_SPOOLED_BODY_BYTES


@dataclass(frozen=True)
class ProxiedService:
    """One public port of nginx and the internal loopback port(s) of the service behind it."""

    name: str
    public_port: int
    upstream_ports: tuple[int, ...]
    routes: tuple[RouteLimit, ...]
    default_body_bytes: int
    read_timeout_s: float

    @property
    def max_body_bytes(self) -> int:
        """The largest body any of its routes takes."""
        return max([self.default_body_bytes, *(route.max_body_bytes for route in self.routes)])

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


def route_limits(name: str, settings: Any) -> tuple[RouteLimit, ...]:
    """The routes of service ``name`` that take more than a small JSON body, each with its own limit."""
    one_file = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES if hasattr(settings, "max_upload_bytes") else 0
    if name == "gateway":
        batch = settings.max_batch_files * settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        return (
            RouteLimit("= /v1/predict", one_file, "single upload"),
            RouteLimit("= /v1/compare", one_file, "single upload"),
            RouteLimit("= /v1/explain", one_file, "explain"),
            RouteLimit("= /v1/predict/batch", batch, "batch"),
            # A study pushed by a PACS (docs/hospital.md): its own limit, checked again by the gateway.
            RouteLimit("= /v1/studies", settings.dicomweb_max_push_bytes, "dicomweb push"),
        )
    if name == "inference":
        # Its batch route takes what the gateway sends in one call: within the one-upload limit.
        return (
            RouteLimit("~ ^/v1/models/[^/]+/predict(-batch)?$", one_file, "single upload"),
            RouteLimit("= /v1/compare", one_file, "single upload"),
            RouteLimit("= /v1/ood", one_file, "single upload"),
            RouteLimit("~ ^/v1/models/[^/]+/predict-pixels$", settings.max_pixel_batch_bytes, "tensors"),
            RouteLimit("~ ^/v1/models/[^/]+/predict-masked$", settings.masked_body_bytes(), "masked copies"),
            RouteLimit("~ ^/v2/models/.+/infer$", settings.max_pixel_batch_bytes, "tensors"),
        )
    if name == "explainer":
        return (RouteLimit("= /v1/explain", one_file, "explain"),)
    return ()


def default_body_bytes(name: str, settings: Any) -> int:
    """The largest body of any other path of service ``name``: a JSON body (training's own limit)."""
    return int(settings.max_body_bytes) if name == "training" else DEFAULT_MAX_JSON_BODY_BYTES


def largest_body_bytes(name: str, settings: Any) -> int:
    """The largest request body service ``name`` accepts with ``settings`` on any route."""
    limits = [route.max_body_bytes for route in route_limits(name, settings)]
    return max([default_body_bytes(name, settings), *limits])


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
        ProxiedService(
            name,
            port,
            upstream_ports[name],
            route_limits(name, all_settings[name]),
            default_body_bytes(name, all_settings[name]),
            read_timeout_s,
        )
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


@dataclass(frozen=True)
class NginxError:
    """An error nginx answers itself, in the project's body: the statuses it replaces, the code and message."""

    statuses: str  # error_page's statuses, e.g. "502 503"
    code: ErrorCode
    message: str
    retry: bool = False  # a 503 or 429: tells when to try again
    answered: int | None = None  # the status answered, where it is not the code's own (a malformed request: 400)

    @property
    def status(self) -> int:
        return self.answered or HTTP_STATUS[self.code]

    @property
    def path(self) -> str:
        return f"/__bt_errors/{self.code.value.lower()}"


def nginx_errors(service: ProxiedService) -> list[NginxError]:
    """Every error nginx answers itself but a 413 (one per route limit: ``_error_413``)."""
    return [
        NginxError("400 494", ErrorCode.INVALID_REQUEST, "The request line or headers could not be parsed, or are "
                   "too large.", answered=400),
        NginxError("408", ErrorCode.REQUEST_TIMEOUT, "The request was not received in time; send it again, faster."),
        NginxError("414", ErrorCode.URI_TOO_LONG, "The request URL is too long; send parameters in the body."),
        NginxError("429", ErrorCode.TOO_MANY_REQUESTS, "Too many requests from this client; slow down.", retry=True),
        NginxError("502 503", ErrorCode.UPSTREAM_UNAVAILABLE, f"The {service.name} service is not answering; try again "
                   "shortly.", retry=True),
        NginxError("504", ErrorCode.UPSTREAM_TIMEOUT, f"The {service.name} service did not answer within "
                   f"{service.read_timeout_s:g} s.", retry=True),
    ]  # fmt: skip


def _error_413(limit: int) -> str:
    return f"/__bt_errors/413/{limit}"


def _error_pages(service: ProxiedService, limit: int) -> list[str]:
    """The ``error_page`` lines of a server or a route whose body limit is ``limit``."""
    lines = [f"error_page 413 {_error_413(limit)};"]
    for error in nginx_errors(service):
        # "=503": the status nginx answers, where it differs from the one it replaces (a 502 is not a client error).
        status = f" ={error.status}" if str(error.status) != error.statuses else ""
        lines.append(f"error_page {error.statuses}{status} {error.path};")
    return lines


def _json_return(status: int, code: str, message: str) -> str:
    body = f'{{"error":{{"code":"{code}","message":"{message}","request_id":"$bt_request_id"}}}}\\n'
    return f"return {status} '{body}';"


def _error_locations(service: ProxiedService) -> str:
    indent = " " * 12
    limits = sorted({service.default_body_bytes, *(route.max_body_bytes for route in service.routes)})
    blocks = []
    for limit in limits:
        message = f"The request body is larger than the {limit} bytes this route accepts."
        blocks.append(
            f"location = {_error_413(limit)} {{\n"
            f"    add_header X-Request-ID $bt_request_id always;\n"
            f"    {_json_return(413, ErrorCode.FILE_TOO_LARGE.value, message)}\n}}"
        )
    for error in nginx_errors(service):
        retry = f"    add_header Retry-After {DEFAULT_RETRY_AFTER_S} always;\n" if error.retry else ""
        blocks.append(
            f"location = {error.path} {{\n    add_header X-Request-ID $bt_request_id always;\n{retry}"
            f"    {_json_return(error.status, error.code.value, error.message)}\n}}"
        )
    return "\n".join(indent + line for block in blocks for line in block.splitlines())


def _locations(service: ProxiedService) -> str:
    indent = " " * 8
    blocks = []
    for route in [*service.routes, RouteLimit("/", service.default_body_bytes, "JSON or no body")]:
        where = (
            "streamed to the service as it arrives (larger than nginx may spool to disk)"
            if route.streamed
            else "read whole first, at most this much spooled to nginx's temp folder"
        )
        lines = [
            f"# {route.kind}: at most {route.max_body_bytes} bytes, {where}.",
            f"location {route.location} {{",
            f"    client_max_body_size {route.max_body_bytes};",
            f"    proxy_request_buffering {'off' if route.streamed else 'on'};",
            *("    " + line for line in _error_pages(service, route.max_body_bytes)),
            f"    proxy_pass http://bt_{service.name};",
            "}",
        ]
        blocks.append("\n".join(indent + line for line in lines))
    return "\n\n".join(blocks)


def render_service(service: ProxiedService, listen: str, upstream_servers: str, next_upstream: str) -> str:
    """One service's upstream and server blocks (the launcher's and the compose container's nginx)."""
    values = {
        "name": service.name,
        "listen": listen,
        "upstream_count": str(upstream_servers.count("server ")),
        "upstream_servers": upstream_servers,
        "upstream_keepalive": _duration(INTERNAL_KEEPALIVE_S),
        "default_body_bytes": str(service.default_body_bytes),
        "read_timeout": _duration(service.read_timeout_s),
        "next_upstream": next_upstream,
        "error_pages": "\n".join(" " * 8 + line for line in _error_pages(service, service.default_body_bytes)),
        "locations": _locations(service),
        "error_locations": _error_locations(service),
    }
    return fill((TEMPLATE_DIR / "service.conf.template").read_text(), values)


def _render_service(service: ProxiedService) -> str:
    servers = "\n".join(
        f"        server {LOOPBACK}:{port} max_fails=1 fail_timeout=5s;" for port in service.upstream_ports
    )
    retry_on = "error timeout non_idempotent" if service.interchangeable_replicas else "off"
    return render_service(service, f"{LOOPBACK}:{service.public_port}", servers, retry_on)


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
