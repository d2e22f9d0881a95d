"""Fixtures only the inference service's tests use: in-process inference apps, and a TCP proxy that can
cut a real service off mid-test."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.processes import LOOPBACK, loopback_url


@pytest.fixture
def inference_app_client(tmp_path: Path, app_clients: Callable[..., Any]) -> Callable[..., Any]:
    """``make(**settings) -> TestClient`` for an in-process inference app, lifespan running.

    Settings not given default to a fresh cache folder, no preload and debug endpoints off.
    """
    from services.inference.config import Settings
    from services.inference.main import create_app

    def make(**settings: Any) -> Any:
        defaults = {
            "cache_dir": tmp_path / "inference-cache",
            "preload": False,
            "audit_uri": f"sqlite:///{tmp_path / 'audit.sqlite'}",
        }
        return app_clients(create_app, Settings(**{**defaults, **settings}))

    return make


@pytest.fixture
def inference_client(model_zoo: Any, inference_app_client: Callable[..., Any]) -> Any:
    """An in-process inference app (TestClient) serving the test zoo."""
    return inference_app_client(tracking_uri=model_zoo.tracking_uri)


class TcpProxy:
    """Forwards a loopback port to another one; ``close()`` then makes the target look down.

    Lets a test cut a real service off mid-test (connections refused, pooled ones reset) without
    stopping a server that other tests share.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server((LOOPBACK, 0))
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self.url = loopback_url(self.port)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str], TcpProxy]]:
    """``proxy(url) -> TcpProxy`` in front of a loopback service; closed at teardown."""
    proxies: list[TcpProxy] = []

    def make(url: str) -> TcpProxy:
        proxy = TcpProxy(int(url.rsplit(":", 1)[1].split("/", 1)[0]))
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
