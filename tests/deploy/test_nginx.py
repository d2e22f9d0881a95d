"""nginx in front of a real gateway, with the configuration the launcher uses (deploy/nginx/*.template):
requests pass through with their request id, slow clients are cut off, oversized bodies get the project's 413.

The client timeouts are set short here (2 s) so a cut-off shows in seconds; everything else is as deployed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.nginx import (
    MAX_SPOOLED_BODY_BYTES,
    NginxSettings,
    ProxiedService,
    fill,
    front_unavailable,
    internal_ports,
    largest_body_bytes,
    nginx_binary,
    proxied_services,
    render,
    start_nginx,
)
from deploy.processes import ManagedProcess, free_port, loopback_url, start_service
from services.gateway.config import Settings as GatewaySettings
from tests.raw_http import send_raw

CLIENT_TIMEOUT_S = 2.0
# Small limits make "too large" cheap to send: a batch of 2 files of 100 kB, as the gateway is started with.
GATEWAY_LIMITS = {"BT_GATEWAY_MAX_UPLOAD_BYTES": "100000", "BT_GATEWAY_MAX_BATCH_FILES": "2"}


@dataclass
class Proxy:
    nginx: ManagedProcess
    gateway: ManagedProcess
    state_dir: Path
    services: list[ProxiedService]

    def url(self, name: str) -> str:
        return loopback_url(next(s.public_port for s in self.services if s.name == name))

    def access_log(self) -> str:
        return (self.state_dir / "access.log").read_text()


@pytest.fixture(scope="module")
def proxy(
    inference_server: ManagedProcess, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[Proxy]:
    """A real gateway (over the zoo's inference) behind nginx; nginx's "explainer" port leads nowhere."""
    assert nginx_binary(NginxSettings()), "nginx is not installed: deploy/test.sh installs Debian's package"
    gateway_env = {**GATEWAY_LIMITS, "BT_GATEWAY_INFERENCE_URL": inference_server.url}
    gateway = start_service("gateway", free_port(), gateway_env, service_logs / "gateway-nginx.log")
    gateway_settings = GatewaySettings(max_upload_bytes=100_000, max_batch_files=2)
    services = proxied_services(
        {"gateway": free_port(), "explainer": free_port()},
        {"gateway": (int(gateway.url.rsplit(":", 1)[1]),), "explainer": (free_port(),)},
        {"gateway": gateway_settings},
    )
    settings = NginxSettings(client_header_timeout_s=CLIENT_TIMEOUT_S, client_body_timeout_s=CLIENT_TIMEOUT_S)
    state_dir = tmp_path_factory.mktemp("nginx")
    nginx = start_nginx(services, state_dir, service_logs / "nginx.log", settings)
    yield Proxy(nginx, gateway, state_dir, services)
    nginx.stop()
    gateway.stop()


def test_the_body_limits_are_derived_from_the_gateway_settings_route_by_route() -> None:
    settings = GatewaySettings(max_upload_bytes=100_000, max_batch_files=2, dicomweb_max_push_bytes=150_000)
    services = proxied_services({"gateway": 1}, {"gateway": (2,)}, {"gateway": settings})
    # A batch of max_batch_files files at the upload limit, plus the multipart framing, is the largest body.
    assert services[0].max_body_bytes == largest_body_bytes("gateway", settings) > 2 * 100_000
    limits = {route.location: route.max_body_bytes for route in services[0].routes}
    assert limits["= /v1/predict"] == limits["= /v1/compare"] == limits["= /v1/explain"] < 2 * 100_000
    assert limits["= /v1/predict/batch"] == services[0].max_body_bytes
    assert limits["= /v1/studies"] == 150_000  # a study pushed by a PACS: its own setting
    text = render(services, Path("/state"), NginxSettings(client_header_timeout_s=1.5))
    for limit in {*limits.values(), services[0].default_body_bytes}:
        assert f"client_max_body_size {limit};" in text
    assert "client_header_timeout 1500ms;" in text
    assert "{{" not in text


def test_routes_over_16_mib_stream_their_body_and_the_others_spool_at_most_their_limit() -> None:
    services = proxied_services({"gateway": 1, "inference": 3}, {"gateway": (2,), "inference": (4,)})
    routes = {(service.name, route.location): route for service in services for route in service.routes}
    assert routes[("gateway", "= /v1/predict/batch")].streamed  # 32 files of 10 MiB
    assert routes[("inference", "~ ^/v2/models/.+/infer$")].streamed  # 64 MiB of tensors
    assert not routes[("gateway", "= /v1/predict")].streamed
    for route in routes.values():
        assert route.streamed == (route.max_body_bytes > MAX_SPOOLED_BODY_BYTES)


def test_a_placeholder_without_a_value_is_an_error_not_left_in_the_file() -> None:
    with pytest.raises(KeyError, match="listen"):
        fill("server { listen {{listen}}; }", {})


def test_the_launcher_says_why_nginx_is_not_in_front() -> None:
    assert front_unavailable(NginxSettings()) is None  # installed here (deploy/test.sh installs it)
    assert "BT_NGINX_ENABLED" in str(front_unavailable(NginxSettings(enabled=False)))
    assert "not installed" in str(front_unavailable(NginxSettings(binary="no-such-nginx")))
    # Behind nginx the services move to internal ports; MLflow is not proxied and keeps its own.
    moved = internal_ports({"gateway": 8000, "inference": 8001, "mlflow": 5000})
    assert moved == {"gateway": 8100, "inference": 8101, "mlflow": 5000}


def test_a_prediction_passes_through_nginx_with_its_request_id(proxy: Proxy, sample_images: dict[str, bytes]) -> None:
    files = {"file": ("scan.jpg", sample_images["glioma"], "image/jpeg")}
    response = httpx.post(
        f"{proxy.url('gateway')}/v1/predict",
        params={"model": "rf"},
        files=files,
        headers={"x-request-id": "nginx-test-1"},
        trust_env=False,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["label"] in {"glioma", "meningioma", "notumor", "pituitary"}
    assert response.headers["x-request-id"] == "nginx-test-1"

    # Without one, nginx makes the id, the gateway answers with it and nginx's access log records it.
    response = httpx.get(f"{proxy.url('gateway')}/readyz", trust_env=False, timeout=30)
    made = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert f"id={made}" in proxy.access_log()


def _seconds_until_closed(port: int, data: bytes, give_up_s: float = 20.0) -> tuple[float, bytes]:
    """Send ``data`` and stop sending; how long until the server closes, and what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up_s) as sock:
        start = time.monotonic()
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return time.monotonic() - start, received


# What a slow client sends after "POST /v1/predict?model=rf HTTP/1.1" before it stops sending.
SLOW_REQUESTS = {
    "half-the-headers": b"Host: 127.0.0.1\r\nX-Request-ID: half-the-headers\r\n",
    "content-length-and-no-body": b"Host: 127.0.0.1\r\nX-Request-ID: content-length-and-no-body\r\n"
    b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 5000\r\n\r\n",
}


@pytest.mark.parametrize("case", SLOW_REQUESTS)
def test_a_slow_client_is_cut_off_within_the_timeout(proxy: Proxy, case: str) -> None:
    port = next(s.public_port for s in proxy.services if s.name == "gateway")
    # A socket timeout (no close within 20 s) fails the test with socket.timeout.
    elapsed, answer = _seconds_until_closed(port, b"POST /v1/predict?model=rf HTTP/1.1\r\n" + SLOW_REQUESTS[case])
    assert CLIENT_TIMEOUT_S - 0.5 <= elapsed <= CLIENT_TIMEOUT_S + 5, elapsed
    assert answer == b""  # nginx closes without a word
    # nginx logged it as 408 and never opened a connection to the gateway for it.
    logged = _access_log_line(proxy, case)
    assert '" 408 ' in logged and "upstream=- " in logged, logged


def _access_log_line(proxy: Proxy, request_id: str, wait_s: float = 5.0) -> str:
    """The access log's line for ``request_id`` (nginx writes it as the request ends, just after the close)."""
    deadline = time.monotonic() + wait_s
    while True:
        lines = [line for line in proxy.access_log().splitlines() if line.endswith(f"id={request_id}")]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.1)


def gateway_route_limit(proxy: Proxy, location: str) -> int:
    gateway = next(service for service in proxy.services if service.name == "gateway")
    return next(route.max_body_bytes for route in gateway.routes if route.location == location)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_gets_413_in_the_error_shape(proxy: Proxy, chunked: bool) -> None:
    limit = gateway_route_limit(proxy, "= /v1/predict/batch")
    body = b"x" * (limit + 1)
    content: bytes | Iterator[bytes] = iter([body[: limit // 2], body[limit // 2 :]]) if chunked else body
    response = httpx.post(
        f"{proxy.url('gateway')}/v1/predict/batch",
        params={"model": "rf"},
        content=content,
        headers={"content-type": "multipart/form-data; boundary=x", "x-request-id": "too-big-1"},
        trust_env=False,
        timeout=30,
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "FILE_TOO_LARGE"
    assert str(limit) in error["message"]
    assert error["request_id"] == "too-big-1"


def test_a_request_id_that_is_not_plain_is_replaced(proxy: Proxy) -> None:
    # nginx's own error bodies carry the id: a quote in it must not reach the JSON.
    response = httpx.post(
        f"{proxy.url('gateway')}/v1/predict",
        content=b"x" * (gateway_route_limit(proxy, "= /v1/predict") + 1),
        headers={"x-request-id": 'x","code":"EVIL'},
        trust_env=False,
        timeout=30,
    )
    assert response.status_code == 413
    made = response.json()["error"]["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert response.headers["x-request-id"] == made


def test_a_service_that_is_down_gets_503_with_retry_after(proxy: Proxy) -> None:
    response = httpx.get(f"{proxy.url('explainer')}/readyz", trust_env=False, timeout=30)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert int(response.headers["retry-after"]) > 0


# -- large legal images at once through the public port: busy answers in time, memory given back --------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _large_png(side: int = 4000) -> bytes:
    """A legal 4000x4000 RGBA PNG of a few tens of KB (a smooth gradient compresses well): within every limit."""
    import io

    import numpy as np
    from PIL import Image

    gradient = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).convert("RGBA").save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def test_eight_large_pngs_at_once_get_answers_or_server_busy_in_time(
    proxy: Proxy, inference_server: ManagedProcess, sample_images: dict[str, bytes],
    record_property: Callable[[str, object], None],
) -> None:  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    url = f"{proxy.url('gateway')}/v1/predict"
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        warm = http.post(url, params={"model": "rf"}, files={"file": ("a.jpg", sample_images["glioma"], "image/jpeg")})
        assert warm.status_code == 200, warm.text
        idle = _rss_mb(inference_server.process.pid)
        large = _large_png()
        assert len(large) < 100_000  # under the gateway's upload limit here

        def post(_: int) -> httpx.Response:
            return http.post(url, params={"model": "rf"}, files={"file": ("large.png", large, "image/png")})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
    statuses = [answer.status_code for answer in answers]
    record_property("statuses", statuses)
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "SERVER_BUSY", answer.text
            assert int(answer.headers["retry-after"]) >= 1
    time.sleep(1.0)  # the decodes of requests answered busy may still be finishing
    after = _rss_mb(inference_server.process.pid)
    record_property("rss_idle_mb", round(idle, 1))
    record_property("rss_after_mb", round(after, 1))
    assert after - idle <= 100, f"inference kept {after - idle:.0f} MB after the burst (idle {idle:.0f} MB)"


# -- limits per route at the edge: what a chunked 300 MB body costs nginx's disk; nginx's own errors in JSON ----------


@pytest.fixture(scope="module")
def default_proxy(
    inference_server: ManagedProcess, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[Proxy]:
    """A gateway with its default limits (10 MiB files, batches of 32: a 320 MiB batch body) behind nginx."""
    gateway_env = {"BT_GATEWAY_INFERENCE_URL": inference_server.url}
    gateway = start_service("gateway", free_port(), gateway_env, service_logs / "gateway-nginx-defaults.log")
    services = proxied_services({"gateway": free_port()}, {"gateway": (int(gateway.url.rsplit(":", 1)[1]),)})
    state_dir = tmp_path_factory.mktemp("nginx-defaults")
    nginx = start_nginx(services, state_dir, service_logs / "nginx-defaults.log")
    yield Proxy(nginx, gateway, state_dir, services)
    nginx.stop()
    gateway.stop()


class DiskPeak:
    """The largest total size of nginx's request-body temp files, sampled every few ms while it runs. nginx unlinks
    such a file as soon as it opens it, so they are found among its processes' open files (/proc/<pid>/fd)."""

    def __init__(self, nginx: ManagedProcess, folder: Path) -> None:
        self.master = nginx.process.pid
        self.folder = str(folder.resolve())
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _pids(self) -> list[int]:
        children = Path(f"/proc/{self.master}/task/{self.master}/children").read_text().split()
        return [self.master, *map(int, children)]

    def _total(self) -> int:
        total = 0
        for pid in self._pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(FileNotFoundError, OSError):
                        if os.readlink(fd.path).startswith(self.folder):
                            total += os.stat(fd.path).st_size  # the open file, even once unlinked
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(0.002)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


MIB = 1024 * 1024
CHUNKED_BODY_BYTES = 300 * 1000 * 1000
FILE_PART = b'--bt-boundary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
MULTIPART = {"Content-Type": "multipart/form-data; boundary=bt-boundary"}
END_OF_BODY = b"\r\n--bt-boundary--\r\n"


@pytest.mark.parametrize(
    ("path", "field"), [("/v1/predict?model=rf", "file"), ("/v1/predict/batch?model=rf", "files")], ids=["one", "batch"]
)
def test_a_chunked_300_mb_body_puts_at_most_16_mib_on_nginx_disk(
    default_proxy: Proxy, path: str, field: str, record_property: Callable[[str, object], None]
) -> None:
    prefix = FILE_PART.replace(b'name="file"', f'name="{field}"'.encode())
    url = default_proxy.url("gateway")
    with DiskPeak(default_proxy.nginx, default_proxy.state_dir / "tmp" / "body") as disk:
        answer = send_raw(url, path, MULTIPART, CHUNKED_BODY_BYTES, True, prefix, timeout_s=120, suffix=END_OF_BODY)
    record_property("disk_peak_mib", round(disk.peak / MIB, 2))
    assert disk.peak <= 16 * MIB, f"nginx wrote {disk.peak / MIB:.1f} MiB to disk"
    if field == "file":  # refused as it passes the route's limit (one file)
        assert answer.status == 413 and answer.body["error"]["code"] == "FILE_TOO_LARGE", answer
        assert answer.body_bytes_sent < CHUNKED_BODY_BYTES // 4, answer.body_bytes_sent
    else:  # within the batch's 320 MiB: streamed to the gateway, where the file gets its own FILE_TOO_LARGE
        assert answer.status == 200, answer
        (item,) = answer.body["results"]
        assert item["error"]["code"] == "FILE_TOO_LARGE"


def test_a_10_kb_url_gets_414_in_the_json_error_body(proxy: Proxy) -> None:
    response = httpx.get(f"{proxy.url('gateway')}/v1/models", params={"x": "a" * 10_000}, trust_env=False, timeout=30)
    assert response.status_code == 414
    error = response.json()["error"]
    assert error["code"] == "URI_TOO_LONG" and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_every_error_nginx_answers_itself_has_a_json_body() -> None:
    services = proxied_services({"gateway": 1}, {"gateway": (2,)})
    text = render(services, Path("/state"), NginxSettings())
    for status in (400, 408, 413, 414, 429, 502, 503, 504):
        assert re.search(rf"error_page [0-9 ]*\b{status}\b", text), status
    assert 'return 414 \'{"error":{"code":"URI_TOO_LONG"' in text
