"""The guard against non-MRI input, fitted on the shipped sample: generated non-MRI images are refused, held-out
MRI slices pass, training's input is inference's input, the ONNX graph computes what numpy and the ONNX extractor
compute, and the texture detector refuses what the mixture alone accepts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from benchmarks.ood_sets import ood_images
from services.training.guard_texture import texture_features, texture_scores
from services.training.ood_guard import (
    FLAG_QUANTILE,
    GUARD_IMAGE_SIZE,
    REFUSAL_TAIL,
    OodGuard,
    clopper_pearson,
    combined_scores,
    files_input,
    fit_guard,
    fit_guard_cv,
    guard_folds,
    guard_onnx,
    guard_scores,
    thresholds_from_scores,
)
from shared.core.dataset import SAMPLE_DATA_DIR, discover
from shared.core.guard_input import (
    GUARD_COLOUR_INPUT_NAME,
    GUARD_FEATURES_INPUT_NAME,
    GUARD_INPUT_KIND,
    GuardInput,
    guard_input,
    stacked,
)
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import GUARD_INPUT_NAME, GUARD_METADATA_KEY

SIZE = GUARD_IMAGE_SIZE


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def non_mri_images() -> GuardInput:
    """Photo-, document- and noise-like images, as inference computes an upload's guard input."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    colour = np.stack([xx * 200 + 30, yy * 150 + 60, (1 - xx) * 120 + 40], axis=-1)
    images = [
        Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)),
        Image.fromarray(((xx * 0.7 + yy * 0.3) * 255).astype(np.uint8)),
        Image.fromarray((((np.floor(xx * 8) + np.floor(yy * 8)) % 2) * 255).astype(np.uint8)),
        Image.new("RGB", (128, 128), (230, 230, 230)),
        Image.fromarray(colour.astype(np.uint8)),
    ]
    page = Image.new("L", (160, 128), 245)
    draw = ImageDraw.Draw(page)
    for row in range(8):
        draw.text((4, 4 + 15 * row), "invoice total due 2026", fill=10)
    images.append(page)
    return stacked([guard_input(_png(image)) for image in images])


@pytest.fixture(scope="module")
def sample_inputs(sample_arrays) -> GuardInput:
    """The sample's guard inputs as training computes them: cached thumbnails and each file's colour."""
    pixels, _ = sample_arrays(SIZE)
    return files_input(discover(SAMPLE_DATA_DIR).train.paths, pixels)


def _parts(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit (every 3rd image left out), threshold and held-out masks of the sample."""
    index = np.arange(count)
    return index % 3 != 0, index % 6 == 0, index % 6 == 3


@pytest.fixture(scope="module")
def sample_split(sample_inputs: GuardInput) -> tuple[GuardInput, GuardInput, GuardInput]:
    """Fit, threshold and held-out thirds of the sample."""
    fit, threshold, held_out = _parts(len(sample_inputs.pixels))
    return sample_inputs.part(fit), sample_inputs.part(threshold), sample_inputs.part(held_out)


@pytest.fixture(scope="module")
def guard(sample_split, sample_arrays, mobilenetv2_weights: Path) -> OodGuard:
    fit, threshold, _ = sample_split
    labels = np.asarray(sample_arrays(SIZE)[1])
    fit_labels = labels[_parts(len(labels))[0]]
    return fit_guard(fit, threshold, quantile=1.0, weights=mobilenetv2_weights, labels=fit_labels)


def test_training_input_is_the_input_inference_computes(sample_inputs: GuardInput) -> None:
    paths = discover(SAMPLE_DATA_DIR).train.paths
    for index in (0, 41, 119):
        served = guard_input(paths[index].read_bytes())
        np.testing.assert_array_equal(served.pixels[0], sample_inputs.pixels[index])
        np.testing.assert_array_equal(served.features[0], sample_inputs.features[index])
        np.testing.assert_array_equal(served.colours[0], sample_inputs.colours[index])


def test_guard_refuses_generated_non_mri_images(guard: OodGuard) -> None:
    scores = guard_scores(guard, non_mri_images())
    assert (scores > guard.threshold).all(), scores


def test_guard_passes_held_out_mri_slices(guard: OodGuard, sample_split) -> None:
    _, _, held_out = sample_split
    refused = (guard_scores(guard, held_out) > guard.threshold).mean()
    assert refused <= 0.15, refused  # 20 images, a threshold from 20 others: a loose bound on a small sample


def _served(guard: OodGuard, inputs: GuardInput) -> tuple[np.ndarray, ort.InferenceSession]:
    session = ort.InferenceSession(guard_onnx(guard), providers=["CPUExecutionProvider"])
    feeds = {GUARD_INPUT_NAME: inputs.pixels, GUARD_FEATURES_INPUT_NAME: inputs.features}
    return session.run(None, {**feeds, GUARD_COLOUR_INPUT_NAME: inputs.colour_input()})[0][:, 0], session


def test_onnx_graph_matches_numpy_and_carries_its_threshold_and_input_kind(guard: OodGuard, sample_split) -> None:
    _, _, held_out = sample_split
    inputs = stacked([held_out, non_mri_images()])
    served, session = _served(guard, inputs)
    np.testing.assert_allclose(served, guard_scores(guard, inputs), rtol=1e-4, atol=1e-3)
    meta = json.loads(session.get_modelmeta().custom_metadata_map[GUARD_METADATA_KEY])
    assert meta["threshold"] == pytest.approx(guard.threshold)
    assert meta["image_size"] == SIZE
    assert meta["input_kind"] == GUARD_INPUT_KIND


def test_fit_refuses_too_few_images(sample_split) -> None:
    fit, _, _ = sample_split
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_guard(fit.part(np.arange(1)), fit.part(np.arange(1)))


def test_graph_score_is_the_larger_normalised_score_of_the_two_detectors(guard: OodGuard, sample_split) -> None:
    """The one graph's score equals its parts computed apart: the texture detector on the features the ONNX
    extractor gives (as training fits it), the mixture in numpy, each on its own thresholds' scale."""
    _, _, held_out = sample_split
    inputs = stacked([held_out, non_mri_images()])
    assert guard.texture is not None
    texture = texture_scores(guard.texture, texture_features(guard.texture.extractor, inputs.colours))
    mixture_alone = OodGuard(**{**guard.__dict__, "texture": None})
    served, _ = _served(guard, inputs)
    expected = combined_scores(guard, guard_scores(mixture_alone, inputs), texture)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-3)
    # both detectors decide some of these scores: neither part is dead weight in the graph
    texture_z = (texture - guard.texture_scale[0]) / (guard.texture_scale[1] - guard.texture_scale[0])
    assert (np.isclose(expected, texture_z)).any() and (~np.isclose(expected, texture_z)).any()


def test_v4_refuses_photos_the_mixture_alone_accepts(guard: OodGuard) -> None:
    """A photo rotated onto black corners and the Shepp-Logan phantom look like a slice on black to every
    statistic of the mixture; the texture detector refuses them (benchmarks/ood_sets.py, never fitted on)."""
    wanted = ("skimage:brick|rot30", "skimage:shepp_logan_phantom")
    items = dict(ood_images(other_modalities=False))
    inputs = stacked([guard_input(items[name]) for name in wanted])
    mixture_alone = OodGuard(**{**guard.__dict__, "texture": None})
    mixture = guard_scores(mixture_alone, inputs)
    mixture_z = (mixture - guard.mixture_scale[0]) / (guard.mixture_scale[1] - guard.mixture_scale[0])
    assert (mixture_z <= guard.threshold).all(), mixture_z
    assert (guard_scores(guard, inputs) > guard.threshold).all()


def test_fit_without_weights_fails_with_a_clear_message(sample_split, tmp_path: Path) -> None:
    fit, threshold, _ = sample_split
    with pytest.raises(ServiceError) as caught:
        fit_guard(fit, threshold, weights=tmp_path / "missing.h5")
    assert caught.value.code == ErrorCode.WEIGHTS_NOT_FOUND
    assert "MobileNetV2 weights not found" in caught.value.message


def test_flag_threshold_is_in_the_metadata_and_never_above_the_refusal_threshold(guard: OodGuard) -> None:
    meta = guard.metadata()
    assert meta["flag_threshold"] <= meta["threshold"]
    proto_meta = json.loads(
        ort.InferenceSession(guard_onnx(guard), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map[GUARD_METADATA_KEY]
    )
    assert proto_meta["flag_threshold"] == pytest.approx(guard.flag)


def test_thresholds_from_scores_extrapolate_an_exponential_tail() -> None:
    scores = np.random.default_rng(0).exponential(1.0, 200_000)
    refusal, flag = thresholds_from_scores(scores)
    assert flag == pytest.approx(np.log(1 / (1 - FLAG_QUANTILE)), abs=0.05)
    assert refusal == pytest.approx(np.log(1 / REFUSAL_TAIL), abs=0.15)
    assert (scores > refusal).mean() == pytest.approx(REFUSAL_TAIL, rel=0.3)


def test_clopper_pearson_interval() -> None:
    assert clopper_pearson(0, 100) == pytest.approx((0.0, 0.0362), abs=1e-4)
    low, high = clopper_pearson(5, 1000)
    assert low == pytest.approx(0.00162, abs=1e-4) and high == pytest.approx(0.01164, abs=1e-4)


def test_folds_keep_each_duplicate_group_whole() -> None:
    groups = np.repeat(np.arange(30), 3)
    labels = np.arange(90) % 4
    folds = guard_folds(groups, labels, 5, seed=1)
    assert set(folds) == set(range(5))
    for group in range(30):
        assert len(set(folds[groups == group])) == 1
    with pytest.raises(ValueError, match="2 duplicate groups"):
        guard_folds(np.zeros(10, dtype=int), None, 5, seed=1)


def test_cross_validated_fit_reports_honest_rates_and_both_thresholds(sample_arrays, mobilenetv2_weights) -> None:
    pixels, labels = sample_arrays(SIZE)
    paths = discover(SAMPLE_DATA_DIR).train.paths
    groups = np.arange(len(paths)) // 2  # pairs as duplicate groups
    guard, validation = fit_guard_cv(
        paths, pixels, groups, labels, seed=3, folds=3, copies=1, weights=mobilenetv2_weights, texture_components=8
    )
    assert guard.fitted_images == 2 * len(paths)  # every slice and one re-upload of each
    # the texture detector's components as asked, in the shipped guard and in every fold's
    assert guard.metadata()["texture_components"] == 8
    assert {len(fold_guard.texture.components) for fold_guard in validation.fold_guards} == {8}
    assert guard.flag <= guard.threshold
    assert set(validation.folds) == {0, 1, 2}
    for group in np.unique(groups):
        assert len(set(validation.folds[groups == group])) == 1
    assert validation.refused == int(validation.refused_mask().sum())
    meta = guard.metadata()
    assert meta["false_refusal_cv"] == pytest.approx(validation.refused / len(paths))
    assert meta["flag_rate_cv"] == pytest.approx(validation.flagged / len(paths))
    low, high = meta["false_refusal_cv_interval"]
    assert 0 <= low <= meta["false_refusal_cv"] <= high <= 1
    assert meta["cv_images"] == len(paths) and meta["cv_folds"] == 3 and meta["augmented_copies"] == 1
    # a fold's normalisers and thresholds come from the other folds' scores only
    mixture, texture = validation.detector_scores
    for fold, fold_guard in enumerate(validation.fold_guards):
        others, held = validation.folds != fold, validation.folds == fold
        assert fold_guard.mixture_scale == pytest.approx(thresholds_from_scores(mixture[others])[::-1])
        assert fold_guard.texture_scale == pytest.approx(thresholds_from_scores(texture[others])[::-1])
        expected = thresholds_from_scores(combined_scores(fold_guard, mixture[others], texture[others]))
        assert (fold_guard.threshold, fold_guard.flag_threshold) == pytest.approx(expected)
        held_scores = combined_scores(fold_guard, mixture[held], texture[held])
        np.testing.assert_allclose(validation.scores[held], held_scores)
    # 120 slices: a crude tail, so only the plainest non-MRI images (checkerboard, flat gray, colour) are asked for
    assert (guard_scores(guard, non_mri_images())[2:5] > guard.threshold).all()
