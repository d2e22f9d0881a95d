"""Hostile and broken uploads against real gateway and inference processes: one table, both services.

Every case answers its declared status in the one JSON error body (no 5xx, no stack trace, no server path);
an image declaring more pixels than the limit is refused from its header; a large image under the limit is
decoded; an oversized body is refused after at most the limit's worth of bytes, with or without a
Content-Length (chunked); decodes beyond the process's slots get 503 SERVER_BUSY with Retry-After; the
training service's JSON body has its own small limit.
"""

from __future__ import annotations

import io
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy.processes import ManagedProcess, free_port, start_service
from shared.kit.service import DEFAULT_MAX_JSON_BODY_BYTES, DEFAULT_MAX_UPLOAD_BYTES
from tests.conftest import ModelZoo
from tests.error_body import error_body
from tests.raw_http import send_raw

MODEL = "rf"
BATCH_FILES = 2
BODY_TIMEOUT_S = 3
# Words that would betray a stack trace or a server path in an answer.
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", '.py"', "Exception")


def png(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit grayscale pixels, with almost no pixel data: what a
    decompression bomb looks like until it is decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass(frozen=True)
class Service:
    """Where one service takes a prediction upload, and how it names a model and version."""

    name: str
    url: str

    def predict_path(self, model: str = MODEL, version: str | None = None) -> str:
        if self.name == "gateway":
            query = f"?model={model}" + (f"&version={version}" if version else "")
            return f"/v1/predict{query}"
        return f"/v1/models/{model}/predict" + (f"?version={version}" if version else "")


@pytest.fixture(scope="module")
def gateway(inference_server: ManagedProcess, service_logs: Path) -> Iterator[ManagedProcess]:
    env = {
        "BT_GATEWAY_INFERENCE_URL": inference_server.url,
        "BT_GATEWAY_EXPLAINER_URL": inference_server.url,
        # A batch may hold this many files of max_upload_bytes: 2 keeps the oversized-batch case small.
        "BT_GATEWAY_MAX_BATCH_FILES": str(BATCH_FILES),
        # A whole body within 3 s: the slow-body cases show in seconds (every upload here takes milliseconds).
        "BT_GATEWAY_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    server = start_service("gateway", free_port(), env, service_logs / "gateway-bad-input.log")
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["gateway", "inference"])
def service(request: pytest.FixtureRequest, inference_server: ManagedProcess) -> Service:
    process = request.getfixturevalue("gateway") if request.param == "gateway" else inference_server
    return Service(request.param, process.url)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        yield http


def scan(side: int = 64) -> Image.Image:
    gradient = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    return Image.fromarray(gradient)


# -- the table: what is sent -> status and code ------------------------------------------------------

Send = Callable[[httpx.Client, Service], httpx.Response]


def upload(data: bytes, filename: str = "scan.png", content_type: str = "image/png", field: str = "file") -> Send:
    return lambda http, svc: http.post(svc.url + svc.predict_path(), files={field: (filename, data, content_type)})


def raw(body: bytes, content_type: str) -> Send:
    return lambda http, svc: http.post(
        svc.url + svc.predict_path(), content=body, headers={"content-type": content_type}
    )


def noted(svc: Service, note: str) -> str:
    """The predict path with an extra query parameter no route reads."""
    path = svc.predict_path()
    return f"{path}{'&' if '?' in path else '?'}note={note}"


def with_path(path: Callable[[Service], str], data: bytes) -> Send:
    return lambda http, svc: http.post(svc.url + path(svc), files={"file": ("scan.png", data, "image/png")})


GOOD = png(scan())
JPEG_BYTES = jpeg(scan(128).convert("RGB"))
MULTIPART_GARBAGE = b"--xyz\r\nbroken header line\r\n\r\n" + GOOD + b"\r\n--xyz--\r\n"
NOT_MULTIPART = b"\x00" * 100
FAKE_DICOM = b"\x00" * 128 + b"DICM" + b"\x00" * 16

# (case id, what is sent, status, code or None for a success)
CASES: list[tuple[str, Send, int, str | None]] = [
    ("empty file", upload(b""), 415, "INVALID_IMAGE"),
    ("text file", upload(b"hello, this is not an image", "notes.txt", "text/plain"), 415, "INVALID_IMAGE"),
    ("png signature only", upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), 415, "INVALID_IMAGE"),
    ("truncated png", upload(GOOD[: len(GOOD) // 2]), 415, "INVALID_IMAGE"),
    ("truncated jpeg", upload(JPEG_BYTES[: len(JPEG_BYTES) // 2], "scan.jpg", "image/jpeg"), 415, "INVALID_IMAGE"),
    ("gif header only", upload(b"GIF89a"), 415, "INVALID_IMAGE"),
    ("svg", upload(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "a.svg", "image/svg+xml"), 415, "INVALID_IMAGE"),
    ("html", upload(b"<html><script>alert(1)</script></html>", "a.html", "text/html"), 415, "INVALID_IMAGE"),
    (
        "pdf",
        upload(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "a.pdf", "application/pdf"),
        415,
        "INVALID_IMAGE",
    ),
    ("zip", upload(b"PK\x03\x04" + b"\x00" * 100, "a.zip", "application/zip"), 415, "INVALID_IMAGE"),
    (
        "dicom without pixels",
        upload(FAKE_DICOM, "a.dcm", "application/dicom"),
        415,
        "UNSUPPORTED_DICOM",
    ),
    (
        "above the pixel limit (7000x7000 RGBA)",
        upload(png(Image.new("RGBA", (7000, 7000)), compress_level=9)),
        415,
        "INVALID_IMAGE",
    ),
    ("8000x8000 declared, no pixel data", upload(declared_png(8000, 8000)), 415, "INVALID_IMAGE"),
    ("100000x100000 declared (Pillow's own bomb guard)", upload(declared_png(100_000, 100_000)), 415, "INVALID_IMAGE"),
    ("wrong field name", upload(GOOD, field="image"), 422, "INVALID_REQUEST"),
    ("no body", lambda http, svc: http.post(svc.url + svc.predict_path()), 422, "INVALID_REQUEST"),
    ("json instead of multipart", raw(b'{"file": "x"}', "application/json"), 422, "INVALID_REQUEST"),
    ("urlencoded form", raw(b"file=abc", "application/x-www-form-urlencoded"), 422, "INVALID_REQUEST"),
    ("broken multipart", raw(MULTIPART_GARBAGE, "multipart/form-data; boundary=xyz"), 400, "INVALID_REQUEST"),
    ("multipart without boundary", raw(GOOD, "multipart/form-data"), 400, "INVALID_REQUEST"),
    ("binary body declared multipart", raw(NOT_MULTIPART, "multipart/form-data; boundary=xyz"), 400, "INVALID_REQUEST"),
    (
        "part without a name",
        raw(b"--xyz\r\nContent-Type: image/png\r\n\r\nabc\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz"),
        400,
        "INVALID_REQUEST",
    ),
    ("file over the upload limit", upload(b"\x00" * (DEFAULT_MAX_UPLOAD_BYTES + 1)), 413, "FILE_TOO_LARGE"),
    ("unknown model", with_path(lambda svc: svc.predict_path(model="resnet"), GOOD), 404, "MODEL_NOT_FOUND"),
    ("unknown version", with_path(lambda svc: svc.predict_path(version="99"), GOOD), 404, "VERSION_NOT_FOUND"),
    (
        "path-like version",
        with_path(lambda svc: svc.predict_path(version="..%2F..%2Fetc"), GOOD),
        422,
        "INVALID_REQUEST",
    ),
    ("1x1 image", upload(png(Image.new("L", (1, 1)))), 200, None),
    (
        "large image under the limit (3000x3000 RGBA)",
        upload(png(scan(3000).convert("RGBA"), compress_level=1)),
        200,
        None,
    ),
    ("jpeg sent as png", upload(JPEG_BYTES, "scan.png", "image/png"), 200, None),
    ("16-bit png", upload(png(Image.fromarray(np.asarray(scan()).astype(np.uint16) * 256))), 200, None),
    ("hostile file name", upload(GOOD, "../../../etc/passwd\x00.png"), 200, None),
    # Unsafe text anywhere in the URL, even in a parameter no route reads: refused before any route runs.
    (
        "NUL in a query parameter",
        with_path(lambda svc: noted(svc, "%00"), GOOD),
        422,
        "INVALID_REQUEST",
    ),
    ("escape character", with_path(lambda svc: noted(svc, "%1B[2J"), GOOD), 422, "INVALID_REQUEST"),
    ("lone surrogate", with_path(lambda svc: noted(svc, "%ED%A0%80"), GOOD), 422, "INVALID_REQUEST"),
    (
        "NUL in the path",
        with_path(lambda svc: svc.predict_path().replace("/v1/", "/v1%00/", 1), GOOD),
        422,
        "INVALID_REQUEST",
    ),
    ("accented text is fine", with_path(lambda svc: noted(svc, "%C3%A9"), GOOD), 200, None),
]


@pytest.mark.parametrize(("sent", "status", "code"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_table(client: httpx.Client, service: Service, sent: Send, status: int, code: str | None) -> None:
    response = sent(client, service)
    for leak in LEAKS:
        assert leak not in response.text, f"{leak!r} in the answer: {response.text[:300]}"
    if code is None:
        assert response.status_code == status, response.text
        assert set(response.json()["probabilities"]) == {"glioma", "meningioma", "notumor", "pituitary"}
    else:
        error_body(response, status, code)


# -- oversized bodies on a raw socket: refused after at most the limit's worth of bytes ---------------


MULTIPART_HEAD = {"Content-Type": "multipart/form-data; boundary=bt-boundary"}
# The start of one file part: the zeros that follow are its content, as a real oversized upload's would be.
FILE_PART = b'--bt-boundary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
FILES_PART = FILE_PART.replace(b'name="file"', b'name="files"')
OVERSIZE = 8 * DEFAULT_MAX_UPLOAD_BYTES


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_upload_is_refused_before_it_is_read(service: Service, chunked: bool) -> None:
    answer = send_raw(service.url, service.predict_path(), MULTIPART_HEAD, OVERSIZE, chunked, FILE_PART)
    assert answer.status == 413 and answer.body["error"]["code"] == "FILE_TOO_LARGE", answer
    # Loopback socket buffers hold a few MB; the rest of the 80 MB was never sent because nobody read it.
    assert answer.body_bytes_sent < OVERSIZE // 2, answer.body_bytes_sent
    if not chunked:
        assert answer.body_bytes_sent < DEFAULT_MAX_UPLOAD_BYTES, "a declared length is refused before the body"


def test_a_small_chunked_upload_is_accepted(client: httpx.Client, service: Service) -> None:
    def chunks() -> Iterator[bytes]:  # a generator body: httpx sends it chunked, without a Content-Length
        boundary = b"bt-boundary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n" + GOOD + b"\r\n--" + boundary + b"--\r\n"

    response = client.post(
        service.url + service.predict_path(), content=chunks(), headers={"content-type": MULTIPART_HEAD["Content-Type"]}
    )
    assert response.status_code == 200, response.text
    assert response.request.headers.get("transfer-encoding") == "chunked"


def test_an_oversized_chunked_batch_is_refused_on_the_gateway(gateway: ManagedProcess) -> None:
    path = f"/v1/predict/batch?model={MODEL}"
    answer = send_raw(gateway.url, path, MULTIPART_HEAD, OVERSIZE, chunked=True, prefix=FILES_PART)
    assert answer.status == 413 and answer.body["error"]["code"] == "FILE_TOO_LARGE", answer
    assert answer.body["error"]["details"]["max_files"] == BATCH_FILES
    assert answer.body_bytes_sent < OVERSIZE // 2, answer.body_bytes_sent


# -- decode slots: beyond them, 503 SERVER_BUSY with Retry-After --------------------------------------


@pytest.fixture(scope="module")
def one_slot_inference(
    model_zoo: ModelZoo, tmp_path_factory: pytest.TempPathFactory, service_logs: Path
) -> Iterator[ManagedProcess]:
    """An inference process that decodes one image at a time and waits at most 10 ms for its turn."""
    env = {
        "MLFLOW_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_TRACKING_URI": model_zoo.tracking_uri,
        "BT_INFERENCE_CACHE_DIR": str(tmp_path_factory.mktemp("one-slot-cache")),
        "BT_DECODE_MAX_CONCURRENT": "1",
        "BT_DECODE_WAIT_S": "0.01",
    }
    server = start_service("inference", free_port(), env, service_logs / "inference-one-slot.log")
    yield server
    server.stop()


def test_decodes_beyond_the_slots_get_server_busy_with_retry_after(one_slot_inference: ManagedProcess) -> None:
    large = png(scan(4000).convert("RGBA"), compress_level=1)  # a few hundred ms to decode
    url = f"{one_slot_inference.url}/v1/models/{MODEL}/predict"
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        assert http.post(url, files={"file": ("a.png", GOOD, "image/png")}).status_code == 200  # model loaded
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: http.post(url, files={"file": ("a.png", large, "image/png")}), range(6)))
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) == {200, 503}, statuses
    for answer in answers:
        if answer.status_code == 503:
            error_body(answer, 503, "SERVER_BUSY")
            assert int(answer.headers["retry-after"]) >= 1


# -- the training service's JSON body ----------------------------------------------------------------


@pytest.fixture(scope="module")
def training_server(service_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """The training service as a process with no token: it can never start a run."""
    env = {"BT_TRAINING_TRACKING_URI": "http://127.0.0.1:9", "BT_TRAINING_API_TOKEN": ""}
    server = start_service("training", free_port(), env, service_logs / "training-bad-input.log")
    yield server
    server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_training_services_json_body_is_small(training_server: ManagedProcess, chunked: bool) -> None:
    head = {"Content-Type": "application/json"}
    answer = send_raw(training_server.url, "/v1/training-runs", head, 20 * 1024 * 1024, chunked)
    assert answer.status == 413 and answer.body["error"]["code"] == "FILE_TOO_LARGE", answer
    assert str(DEFAULT_MAX_JSON_BODY_BYTES) in answer.body["error"]["message"]
    assert answer.body_bytes_sent < 10 * 1024 * 1024


# -- Open Inference Protocol JSON bodies: a byte limit before parsing, parsing bounded in memory ------------------


def _memory_mb(pid: int, field: str) -> float:
    """A process's VmRSS or VmHWM (its peak since the last reset) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current resident size (Linux 4.0+), for the process's owner.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_growth_mb(process: ManagedProcess, send: Callable[[], Any]) -> tuple[Any, float]:
    """What ``send()`` returns and how far the process's resident memory rose above where it was, in MB."""
    pid = process.process.pid
    _reset_peak(pid)
    before = _memory_mb(pid, "VmRSS")
    result = send()
    return result, _memory_mb(pid, "VmHWM") - before


INFER_PATH = "/v2/models/cnn/infer"
JSON_HEAD = {"Content-Type": "application/json"}
SIXTY_MIB = 60 * 1024 * 1024
# The figure of the issue: a 60 MiB JSON body took inference from 364 to 1,504 MB.
MAX_GROWTH_MB = 50


def _warm_up_infer(url: str) -> None:
    tensor = {"name": "pixels", "shape": [1, 32, 32, 1], "datatype": "FP32", "data": [0.5] * 1024}
    metadata = httpx.get(url + "/v2/models/cnn", timeout=60.0, trust_env=False).json()
    tensor["name"] = metadata["inputs"][0]["name"]
    response = httpx.post(url + INFER_PATH, json={"inputs": [tensor]}, timeout=60.0, trust_env=False)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_60_mib_json_infer_body_is_413_and_costs_little_memory(
    inference_server: ManagedProcess, chunked: bool, record_property: Callable[[str, object], None]
) -> None:
    _warm_up_infer(inference_server.url)
    prefix = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":['
    answer, growth = _peak_growth_mb(
        inference_server, lambda: send_raw(inference_server.url, INFER_PATH, JSON_HEAD, SIXTY_MIB, chunked, prefix)
    )
    record_property("growth_mb", round(growth, 1))
    assert answer.status == 413, answer
    assert "binary" in answer.body["error"], answer.body  # the protocol's body, saying how to send more
    assert growth <= MAX_GROWTH_MB, f"inference grew by {growth:.0f} MB"
    assert answer.body_bytes_sent < SIXTY_MIB // 2, answer.body_bytes_sent


def test_json_bodies_just_under_the_limit_parse_in_bounded_memory(
    inference_server: ManagedProcess, record_property: Callable[[str, object], None]
) -> None:
    """The costliest body the limit lets through (numbers as short as JSON allows), four at once: each is
    parsed off the event loop, one at a time, and refused for its shape (400), not for the memory it took."""
    from services.inference.oip_tensors import json_body_limit

    _warm_up_infer(inference_server.url)
    # The zoo's largest input is 32x32x1; the default 8 rows.
    limit = json_body_limit([(32, 32, 1)], 8)
    head = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,32,32,1],"data":[0.0'
    count = (limit - len(head) - 16) // 4
    body = head + b",0.0" * count + b"]}]}"
    assert limit - 64 < len(body) <= limit

    def send_four() -> list[httpx.Response]:
        with httpx.Client(timeout=60.0, trust_env=False) as http, ThreadPoolExecutor(4) as pool:
            post = lambda _: http.post(inference_server.url + INFER_PATH, content=body, headers=JSON_HEAD)  # noqa: E731
            return list(pool.map(post, range(4)))

    answers, growth = _peak_growth_mb(inference_server, send_four)
    record_property("growth_mb", round(growth, 1))
    for answer in answers:
        assert answer.status_code == 400 and "values" in answer.json()["error"], answer.text
    assert growth <= MAX_GROWTH_MB, f"inference grew by {growth:.0f} MB"


def test_work_that_could_not_answer_within_the_callers_budget_is_server_busy(
    client: httpx.Client, inference_server: ManagedProcess
) -> None:
    """The gateway's x-request-timeout-ms: with less left than a decode and a run take, inference does not start
    the work (the caller would have given up) and says so at once, with Retry-After."""
    path = f"{inference_server.url}/v1/models/{MODEL}/predict"
    files = {"file": ("scan.png", GOOD, "image/png")}
    error_body(client.post(path, files=files, headers={"x-request-timeout-ms": "100"}), 503, "SERVER_BUSY")
    answer = client.post(path, files=files, headers={"x-request-timeout-ms": "100"})
    assert int(answer.headers["retry-after"]) >= 1
    assert client.post(path, files=files, headers={"x-request-timeout-ms": "5000"}).status_code == 200


# -- text no request may hold, and bodies that do not arrive: every service ---------------------------------------

TRAINING_TOKEN = "bad-input-token-0123456789"


@pytest.fixture(scope="module")
def training_with_token(service_logs: Path) -> Iterator[ManagedProcess]:
    """The training service with a token (so a body reaches its validation) and a 3 s body deadline; its MLflow
    address leads nowhere, so no run can start."""
    env = {
        "BT_TRAINING_TRACKING_URI": "http://127.0.0.1:9",
        "BT_TRAINING_API_TOKEN": TRAINING_TOKEN,
        "BT_TRAINING_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    server = start_service("training", free_port(), env, service_logs / "training-token-bad-input.log")
    yield server
    server.stop()


@pytest.mark.parametrize("text", ["data\x00dir", "data\ud800dir", "data\x1bdir"], ids=["nul", "surrogate", "escape"])
def test_unsafe_text_in_a_training_option_is_422(training_with_token: ManagedProcess, text: str) -> None:
    # json.dumps keeps the lone surrogate as its \ud800 escape: what a hostile client sends.
    body = json.dumps({"data_dir": text, "families": ["rf"]}).encode()
    headers = {"authorization": f"Bearer {TRAINING_TOKEN}", "content-type": "application/json"}
    response = httpx.post(f"{training_with_token.url}/v1/training-runs", content=body, headers=headers, trust_env=False)
    error_body(response, 422, "INVALID_REQUEST")
    for leak in LEAKS:
        assert leak not in response.text


def test_unsafe_text_in_a_protocol_request_is_refused(client: httpx.Client, inference_server: ManagedProcess) -> None:
    body = {"id": "r\x00", "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
    response = client.post(f"{inference_server.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400 and "NUL" in response.json()["error"], response.text  # the protocol's 400


def _seconds_to_answer(url: str, path: str, body_head: bytes, trickle: bool) -> tuple[float, int, dict[str, Any]]:
    """Declare a 5000-byte body, send ``body_head`` then nothing (or a byte every 0.5 s): how long until the
    service answers, and what."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + b"Content-Length: 5000\r\n\r\n" + body_head)
        while trickle and not select.select([sock], [], [], 0.5)[0]:
            sock.sendall(b" ")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - started
    status_line, _, rest = data.partition(b"\r\n")
    return elapsed, int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("trickle", [False, True], ids=["half-sent", "trickled"])
@pytest.mark.parametrize("where", ["gateway", "training"])
def test_a_body_that_does_not_arrive_in_time_is_408(request: pytest.FixtureRequest, where: str, trickle: bool) -> None:
    process = request.getfixturevalue("gateway" if where == "gateway" else "training_with_token")
    path = f"/v1/predict?model={MODEL}" if where == "gateway" else "/v1/training-runs"
    elapsed, status, body = _seconds_to_answer(process.url, path, b'{"data_dir": ', trickle)
    assert status == 408 and body["error"]["code"] == "REQUEST_TIMEOUT", body
    assert BODY_TIMEOUT_S - 0.5 <= elapsed <= BODY_TIMEOUT_S + 5, elapsed
