"""What the model cache may be trusted with: records signed with a key the cache folder does not hold.

The cache folder is writable by whoever runs the service (or shares its volume). The sha256 of each file is
checked against the registry's record, but while MLflow is down the expected sha256 come from files in that same
folder (the kept catalogue, ``verified.json`` of a version registered without its tag); someone able to edit a
model file could then edit its expected hash too. Those records are therefore signed (HMAC-SHA256) with a key
that is never written there:

- ``BT_INFERENCE_CACHE_KEY_FILE``: a secret file (e.g. a Kubernetes secret) outside the cache folder; or else
- derived from the MLflow password the service already holds (``MLFLOW_TRACKING_PASSWORD``, a secret of the
  environment, not of the disk); or else
- a random key for this process only: its own records are trusted, those of an earlier process are not (a
  restart while MLflow is down then has no catalogue, and answers 503 rather than trust an unsigned one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
# Domain separation: the derived key signs cache records only, whatever else the password is used for.
_DERIVATION_LABEL = b"bt-inference-cache-records-v1"


def canonical(data: object) -> bytes:
    """The bytes a record's signature covers: sorted keys, no spacing (any re-encoding signs the same)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CacheSigner:
    """Signs and checks cache records; ``source`` says where the key came from (for the log, never the key)."""

    key: bytes
    source: str

    def sign(self, data: object) -> str:
        return hmac.new(self.key, canonical(data), hashlib.sha256).hexdigest()

    def verify(self, data: object, signature: object) -> bool:
        return isinstance(signature, str) and hmac.compare_digest(self.sign(data), signature)

    @classmethod
    def ephemeral(cls) -> CacheSigner:
        return cls(secrets.token_bytes(32), "a random key of this process")

    @classmethod
    def from_password(cls, password: str) -> CacheSigner:
        key = hmac.new(password.encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
        return cls(key, "derived from MLFLOW_TRACKING_PASSWORD")


def cache_signer(key_file: Path | None, cache_dir: Path) -> CacheSigner:
    """The signer of the cache records (see the module's docstring for the order). A key file that is missing,
    short or inside the cache folder stops the service: it would sign nothing the cache could not forge."""
    if key_file is not None:
        if key_file.resolve().is_relative_to(cache_dir.resolve()):
            raise ValueError(f"the cache key file {key_file} must not be inside the cache folder {cache_dir}")
        key = key_file.read_bytes().strip()
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the cache key file {key_file} must hold at least {MIN_KEY_BYTES} bytes")
        return CacheSigner(key, f"the key file {key_file}")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if password:
        return CacheSigner.from_password(password)
    logger.warning(
        "no BT_INFERENCE_CACHE_KEY_FILE and no MLflow password: cache records are signed with a key of this process "
        "only; after a restart the kept catalogue is not trusted until MLflow answers"
    )
    return CacheSigner.ephemeral()
