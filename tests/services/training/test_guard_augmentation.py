"""The guard's fitting re-uploads: decodable images of the same slice, random but reproducible from the seed."""

from __future__ import annotations

import numpy as np

from services.training.guard_augmentation import augmented
from shared.core.dataset import SAMPLE_DATA_DIR, discover
from shared.core.guard_input import FEATURE_NAMES, THUMBNAIL_SIZE, guard_input


def test_re_uploads_are_decodable_gray_slices_and_reproducible() -> None:
    paths = discover(SAMPLE_DATA_DIR).train.paths[:12]
    first = [augmented(path.read_bytes(), np.random.default_rng(5)) for path in paths]
    again = [augmented(path.read_bytes(), np.random.default_rng(5)) for path in paths]
    assert first == again
    chroma = FEATURE_NAMES.index("chroma_mean")
    for data in first:
        inputs = guard_input(data)
        assert inputs.pixels.shape == (1, THUMBNAIL_SIZE**2)
        assert np.isfinite(inputs.features).all()
        assert inputs.features[0, chroma] < 0.01  # still a gray slice


def test_re_uploads_differ_from_the_original() -> None:
    data = discover(SAMPLE_DATA_DIR).train.paths[0].read_bytes()
    rng = np.random.default_rng(0)
    variants = {augmented(data, rng) for _ in range(8)}
    assert len(variants) == 8
