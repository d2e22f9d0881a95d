"""The guard against non-MRI input, fitted on the shipped sample: generated non-MRI images are refused, held-out
MRI slices pass, and the ONNX graph computes what numpy computes."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from services.training.ood_guard import GUARD_IMAGE_SIZE, OodGuard, fit_guard, guard_features, guard_onnx, guard_scores
from shared.imaging import decode_to_array
from shared.schemas import GUARD_INPUT_NAME, GUARD_METADATA_KEY

SIZE = GUARD_IMAGE_SIZE


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def non_mri_images() -> np.ndarray:
    """Photo-, document- and noise-like images, decoded as inference decodes uploads."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    images = [
        Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)),
        Image.fromarray(((xx * 0.7 + yy * 0.3) * 255).astype(np.uint8)),
        Image.fromarray((((np.floor(xx * 8) + np.floor(yy * 8)) % 2) * 255).astype(np.uint8)),
        Image.new("RGB", (128, 128), (230, 230, 230)),
    ]
    page = Image.new("L", (160, 128), 245)
    draw = ImageDraw.Draw(page)
    for row in range(8):
        draw.text((4, 4 + 15 * row), "invoice total due 2026", fill=10)
    images.append(page)
    return np.stack([decode_to_array(_png(image), SIZE) for image in images])


@pytest.fixture(scope="module")
def sample_split(sample_arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's 32 px thumbnails: fit (every 3rd image left out), threshold and held-out thirds."""
    pixels, _ = sample_arrays(SIZE)
    index = np.arange(len(pixels))
    return pixels[index % 3 != 0], pixels[index % 6 == 0], pixels[index % 6 == 3]


@pytest.fixture(scope="module")
def guard(sample_split) -> OodGuard:
    fit, threshold, _ = sample_split
    return fit_guard(fit, threshold, quantile=1.0)


def test_guard_refuses_generated_non_mri_images(guard: OodGuard) -> None:
    scores = guard_scores(guard, non_mri_images())
    assert (scores > guard.threshold).all(), scores


def test_guard_passes_held_out_mri_slices(guard: OodGuard, sample_split) -> None:
    _, _, held_out = sample_split
    refused = (guard_scores(guard, held_out) > guard.threshold).mean()
    assert refused <= 0.15, refused  # 20 images, a threshold from 20 others: a loose bound on a small sample


def test_onnx_graph_matches_numpy_and_carries_its_threshold(guard: OodGuard, sample_split) -> None:
    _, _, held_out = sample_split
    pixels = np.concatenate([held_out, non_mri_images()])
    session = ort.InferenceSession(guard_onnx(guard), providers=["CPUExecutionProvider"])
    served = session.run(None, {GUARD_INPUT_NAME: guard_features(pixels)})[0][:, 0]
    np.testing.assert_allclose(served, guard_scores(guard, pixels), rtol=1e-3, atol=1e-3)
    meta = json.loads(session.get_modelmeta().custom_metadata_map[GUARD_METADATA_KEY])
    assert meta["threshold"] == pytest.approx(guard.threshold)
    assert meta["image_size"] == SIZE


def test_fit_refuses_too_few_images(sample_split) -> None:
    fit, _, _ = sample_split
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_guard(fit[:1], fit[:1])
