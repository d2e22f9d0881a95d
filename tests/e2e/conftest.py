"""The e2e stack needs the MobileNetV2 weights path; the tests pass it in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.fixture(scope="session")
def mobilenetv2_weights() -> Path:
    path = Path(os.environ.get("BT_MOBILENETV2_WEIGHTS", ROOT.parent / "shared" / "weights" / WEIGHTS_NAME))
    assert path.is_file(), f"MobileNetV2 weights not found at {path}; set BT_MOBILENETV2_WEIGHTS"
    return path
