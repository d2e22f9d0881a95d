"""The verified local store: every registered file (an ONNX model, the guard's ONNX file, an ensemble's spec)
checked against its sha256 before every load, and the last catalogue.

Each cached version folder holds the file (``model.onnx``, or ``ensemble.json`` for an ensemble) and
``verified.json`` (the sha256 the file was checked against and where that value came from). The expected sha256
is the registry's ``onnx_sha256`` tag, written by registration for every kind of file; versions registered before
that tag existed are trusted on their first download and their sha256 recorded here, with a warning
(``TRUSTED_ON_DOWNLOAD``): later loads are held to that record. A file that does not match is deleted, fetched
again, and never opened.

The catalogue MLflow last answered (with every version's expected sha256) is kept in ``catalog.json`` in the
cache folder, so that a restart while MLflow is down still knows the versions and aliases it served. It and
``verified.json`` are signed with a key the cache folder does not hold (``cache_trust``): an edited or unsigned
record is ignored, so editing a file and its expected hash together never gets it served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.inference.cache_trust import CacheSigner
from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from shared.core.contract import ONNX_FILENAME
from shared.kit.errors import ErrorCode, ServiceError

logger = logging.getLogger(__name__)

VERIFIED_FILENAME = "verified.json"
CATALOG_FILENAME = "catalog.json"
# Where an expected sha256 came from.
FROM_REGISTRY = "registry tag onnx_sha256"
SIGNATURE_KEY = "signature"
TRUSTED_ON_DOWNLOAD = "trusted on first download (version registered without onnx_sha256)"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomically(path: Path, data: object) -> None:
    """Write then rename: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _verified_record(folder: Path, sha256: str, origin: str) -> dict[str, str]:
    # The folder (registered name, version, source digest) is signed too: a record moved from another version's
    # folder does not verify.
    return {"folder": f"{folder.parent.name}/{folder.name}", "sha256": sha256, "origin": origin}


def recorded_sha256(folder: Path, signer: CacheSigner) -> str | None:
    """The sha256 recorded when the folder's file was downloaded and checked, if any and signed by ``signer``."""
    try:
        data = json.loads((folder / VERIFIED_FILENAME).read_text())
        sha256, origin = data["sha256"], data["origin"]
        signed = signer.verify(_verified_record(folder, sha256, origin), data.get(SIGNATURE_KEY))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    if not signed:
        logger.error("ignoring %s: its signature does not match (edited, or written with another key)", folder)
        return None
    return sha256 if isinstance(sha256, str) else None


def expected_sha256(folder: Path, registry_sha256: str | None, signer: CacheSigner) -> str | None:
    """What the file must hash to: the registry's tag, else the local signed record, else unknown (not servable)."""
    return registry_sha256 or recorded_sha256(folder, signer)


def cached_file_is_valid(model_file: Path, registry_sha256: str | None, label: str, signer: CacheSigner) -> bool:
    """Whether the cached file may be served: it exists and hashes to what is expected. Logs why not."""
    if not model_file.is_file():
        return False
    expected = expected_sha256(model_file.parent, registry_sha256, signer)
    if expected is None:
        logger.warning("cached file of %s has no sha256 to check against; downloading it again", label)
        return False
    actual = file_sha256(model_file)
    if actual != expected:
        logger.error(
            "cached file of %s fails its check (sha256 %s, expected %s): deleted, to be downloaded again",
            label,
            actual[:16],
            expected[:16],
        )
        return False
    return True


def cache_path(cache_dir: Path, record: ModelRecord, version: VersionRecord) -> Path:
    # The source and run pin the content: a reset registry can reuse version numbers.
    digest = hashlib.sha256(f"{version.source}|{version.run_id}".encode()).hexdigest()[:12]
    return cache_dir / record.registered_name / f"v{version.version}-{digest}"


def cached_download(
    cache_dir: Path,
    record: ModelRecord,
    version: VersionRecord,
    fetch: Callable[[Path], Path],
    signer: CacheSigner,
    filename: str = ONNX_FILENAME,
) -> Path:
    """The version's verified file (``filename``) in the cache; ``fetch(destination)`` downloads it unless a valid
    copy is there (and returns the file's path).

    A cached copy that fails its sha256 check is deleted and downloaded again; a download that fails
    it is INVALID_MODEL and never reaches the cache. Two processes sharing the folder (worker processes) may
    both download; the folder's rename makes either one's copy appear complete or not at all.
    """
    target = cache_path(cache_dir, record, version)
    model_file = target / filename
    label = f"{record.short_name}/{version.version}"
    if model_file.is_file() or target.exists():
        if cached_file_is_valid(model_file, version.onnx_sha256, label, signer):
            return model_file
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        found = fetch(staging / "artifact")
        ready = staging / "ready"
        ready.mkdir()
        os.replace(found, ready / filename)
        verify_download(ready / filename, version.onnx_sha256, label, signer, target)
        try:
            os.replace(ready, target)
        except OSError:
            if not model_file.is_file():
                raise
        logger.info("downloaded %s version %s into %s", record.registered_name, version.version, target)
        return model_file
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def verify_download(
    downloaded: Path, registry_sha256: str | None, label: str, signer: CacheSigner, target: Path
) -> None:
    """Check a fresh download against the registry's sha256 and record it beside the file (signed for the
    folder ``target`` it is about to become).

    A version registered without the tag (before training wrote it) is trusted on this first download,
    with a warning; its sha256 is recorded so that every later load is held to it.
    """
    actual = file_sha256(downloaded)
    if registry_sha256 is None:
        logger.warning("%s has no onnx_sha256 tag: its file (sha256 %s) is trusted as downloaded", label, actual)
        _record_for(downloaded.parent, target, actual, TRUSTED_ON_DOWNLOAD, signer)
        return
    if actual != registry_sha256:
        logger.error("download of %s has sha256 %s, registered %s: discarded", label, actual, registry_sha256)
        raise ServiceError(
            ErrorCode.INVALID_MODEL,
            f"Model {label} cannot be served: the file downloaded from the registry does not match the "
            "sha256 recorded when it was registered.",
        )
    _record_for(downloaded.parent, target, actual, FROM_REGISTRY, signer)


def _record_for(staging: Path, target: Path, sha256: str, origin: str, signer: CacheSigner) -> None:
    record = _verified_record(target, sha256, origin)
    write_json_atomically(staging / VERIFIED_FILENAME, {**record, SIGNATURE_KEY: signer.sign(record)})


# -- the last catalogue ---------------------------------------------------------------------------


def save_catalog(cache_dir: Path, catalog: Catalog, tracking_uri: str, signer: CacheSigner) -> None:
    """Keep the catalogue, signed, for a restart while MLflow is down; a failure to write is logged, not raised."""
    data = {"tracking_uri": tracking_uri, **catalog.to_json()}
    try:
        write_json_atomically(cache_dir / CATALOG_FILENAME, {**data, SIGNATURE_KEY: signer.sign(data)})
    except OSError as exc:
        logger.warning("could not save the catalogue in %s: %s", cache_dir, exc)


def load_catalog(cache_dir: Path, tracking_uri: str, signer: CacheSigner) -> Catalog | None:
    """The catalogue saved by ``save_catalog`` for this MLflow, or None when there is none, it cannot be read,
    or its signature does not match (edited, or signed with another key: its expected sha256 are then worth
    nothing). A cache folder pointed at another MLflow since does not serve that one's catalogue."""
    path = cache_dir / CATALOG_FILENAME
    try:
        data = json.loads(path.read_text())
        signature = data.pop(SIGNATURE_KEY, None)
        if not signer.verify(data, signature):
            logger.error("ignoring the saved catalogue %s: its signature does not match (edited, or unsigned)", path)
            return None
        if data.get("tracking_uri") != tracking_uri:
            logger.warning("ignoring the saved catalogue %s: it is of another MLflow server", path)
            return None
        return Catalog.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("ignoring the saved catalogue %s: %s", path, exc)
        return None
