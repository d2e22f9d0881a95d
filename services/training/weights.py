"""Finding the ImageNet MobileNetV2 weights on disk: nothing is ever downloaded."""

from __future__ import annotations

import os
from pathlib import Path

from shared.kit.errors import ErrorCode, ServiceError

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_SETTING = "BT_MOBILENETV2_WEIGHTS"


def resolve_weights(configured: Path | None) -> Path:
    """The configured file, else Keras's own cache folder; never a download."""
    if configured is not None:
        path = Path(configured).expanduser()
        if path.is_file():
            return path
        raise ServiceError(
            ErrorCode.WEIGHTS_NOT_FOUND,
            f"MobileNetV2 weights not found at {str(path)!r} (setting {WEIGHTS_SETTING}).",
        )
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    cached = keras_home / "models" / WEIGHTS_FILE
    if cached.is_file():
        return cached
    raise ServiceError(
        ErrorCode.WEIGHTS_NOT_FOUND,
        f"MobileNetV2 ImageNet weights are not available offline: set {WEIGHTS_SETTING} to the path of "
        f"{WEIGHTS_FILE}, or copy that file into {cached.parent}.",
    )
