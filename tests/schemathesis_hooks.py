"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/services/test_schemathesis.py).

The gateway's STOW-RS-style push takes ``multipart/related; type="application/dicom"``, a media type Schemathesis
has no serializer for: its declared schema is a binary string, sent as the bytes generated (without a boundary, the
gateway refuses them with 422, as it must).
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("multipart/related", "application/octet-stream")
