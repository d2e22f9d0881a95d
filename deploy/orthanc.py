"""A real PACS on loopback: Debian's Orthanc with its DICOMweb plugin, as a plain process with its own config.

Used by the tests (tests/services/gateway/dicomweb) and by ``python -m deploy.stack up --pacs``. Orthanc listens
on one loopback HTTP port and requires a generated user; it is given a free port for DICOM (DIMSE) too
(given to it, unused: its DICOM server is disabled); its database and files live in the folder it is given.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.processes import ManagedProcess, free_port, loopback_url, spawn

ORTHANC_BINARY = "/usr/sbin/Orthanc"
# Where Debian's orthanc-dicomweb installs the plugin (`dpkg -L orthanc-dicomweb`).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"
DEFAULT_PORT = 8042  # Orthanc's own default
INSTALL_HINT = "install Debian's orthanc and orthanc-dicomweb (deploy/test.sh does)"


@dataclass(frozen=True)
class OrthancUser:
    username: str
    password: str

    @classmethod
    def generate(cls) -> OrthancUser:
        return cls("bt-pacs", secrets.token_urlsafe(18))

    def httpx_auth(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self.username, self.password)


@dataclass(frozen=True)
class Orthanc:
    process: ManagedProcess
    user: OrthancUser

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def dicomweb_url(self) -> str:
        return self.process.url + DICOMWEB_ROOT

    def gateway_env(self) -> dict[str, str]:
        """The gateway's settings that point it at this Orthanc."""
        return {
            "BT_GATEWAY_DICOMWEB_URL": self.dicomweb_url,
            "BT_GATEWAY_DICOMWEB_USERNAME": self.user.username,
            "BT_GATEWAY_DICOMWEB_PASSWORD": self.user.password,
        }

    def stop(self) -> None:
        self.process.stop()


def missing() -> str | None:
    """Why Orthanc cannot be started here, or None."""
    if not Path(ORTHANC_BINARY).is_file() and shutil.which("Orthanc") is None:
        return f"Orthanc is not installed: {INSTALL_HINT}"
    if not DICOMWEB_PLUGIN.is_file():
        return f"Orthanc's DICOMweb plugin is not installed: {INSTALL_HINT}"
    return None


def write_config(folder: Path, http_port: int, dicom_port: int, user: OrthancUser) -> Path:
    """Orthanc's configuration: loopback only, one user, the DICOMweb plugin, storage in ``folder``."""
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bt-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "BTPACS",
        # No DIMSE: everything goes over DICOMweb (Orthanc still wants a port, a free one).
        "DicomServerEnabled": False,
        # Loopback only, and a user even there: the gateway's credentials settings are exercised.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user.username: user.password},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/", "EnableWado": False, "Host": "127.0.0.1"},
        # Instances are kept as they come (no transcoding, no compression): what was stored is what is fetched.
        "StorageCompression": False,
        "HttpProxy": "",
        "ExecuteLuaEnabled": False,
        "StableAge": 1,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(folder: Path, log_path: Path, http_port: int | None = None, timeout: float = 60.0) -> Orthanc:
    """Orthanc on free loopback ports (or ``http_port``), up once its DICOMweb root answers the user."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    user = OrthancUser.generate()
    http_port = http_port or free_port()
    config = write_config(folder, http_port, free_port(), user)
    binary = ORTHANC_BINARY if Path(ORTHANC_BINARY).is_file() else str(shutil.which("Orthanc"))
    process = spawn(
        "orthanc", [binary, str(config)], {"PATH": "/usr/sbin:/usr/bin:/bin"}, log_path, loopback_url(http_port)
    )
    try:
        _wait_for_dicomweb(process, user, timeout)
    except BaseException:
        process.stop()
        raise
    return Orthanc(process, user)


def _wait_for_dicomweb(process: ManagedProcess, user: OrthancUser, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"{process.url}{DICOMWEB_ROOT}/studies"
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.process.returncode}:\n{process.log_tail()}")
        try:
            if httpx.get(url, auth=user.httpx_auth(), timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"Orthanc's DICOMweb did not answer within {timeout:.0f}s:\n{process.log_tail()}")


def orthanc_port() -> int:
    return int(os.environ.get("BT_ORTHANC_PORT", DEFAULT_PORT))


def start_stack_pacs(state_dir: Path, logs: Path, keep: Callable[[ManagedProcess], None]) -> Orthanc:
    """The stack's PACS (``python -m deploy.stack up --pacs``): its studies kept in <state>/orthanc across restarts,
    a new user each time (printed, and given to the gateway)."""
    print(
        f"starting Orthanc (DICOMweb) on 127.0.0.1:{orthanc_port()} (data in {state_dir / 'orthanc'}) ...", flush=True
    )
    pacs = start_orthanc(state_dir / "orthanc", logs / "orthanc.log", http_port=orthanc_port())
    keep(pacs.process)
    print(
        f"  Orthanc web page {pacs.url}/app/explorer.html, DICOMweb {pacs.dicomweb_url}\n"
        f"  user {pacs.user.username}, password {pacs.user.password} (also in the gateway's BT_GATEWAY_DICOMWEB_*)"
    )
    return pacs
