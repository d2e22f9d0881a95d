"""The shared Keras training loop: mixup batches and the mixup path of compile_and_fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.training import keras_runtime
from services.training.families import get_family
from shared.core.dataset import SAMPLE_DATA_DIR, discover, load_arrays


def _one_pass(count: int, batch_size: int, class_weight: dict[int, float] | None = None) -> list[tuple[Any, ...]]:
    """Image i is the unit vector e_i, so a blended image shows both weights and who its partner was."""
    keras_runtime.seed_everything(3)
    images, labels = np.eye(count, dtype=np.float32), np.arange(count) % 4
    batches = keras_runtime.mixup_batches(images, labels, 4, batch_size, 0.4, seed=3, class_weight=class_weight)
    return [tuple(np.asarray(part) for part in batch) for batch in batches]


def test_mixup_blends_each_image_with_a_partner_and_its_target_alike() -> None:
    count = 12
    batches = _one_pass(count, batch_size=5)
    assert [len(batch[0]) for batch in batches] == [5, 5, 2], "every image once, the last batch partial"
    labels, blended, seen = np.arange(count) % 4, 0, []
    for mixed, targets in batches:
        for image, target in zip(mixed, targets, strict=True):
            order = np.argsort(image)[::-1]
            main, partner = int(order[0]), int(order[1])
            np.testing.assert_allclose(image.sum(), 1.0, atol=1e-5)
            lam = float(image[main])
            assert lam >= 0.5 - 1e-6, "the original image stays dominant"
            expected = lam * np.eye(4)[labels[main]] + (1 - lam) * np.eye(4)[labels[partner]]
            blended += image[partner] > 0
            np.testing.assert_allclose(target, expected, atol=1e-5)
            seen.append(main)
    assert sorted(seen) == list(range(count))
    assert blended > count // 2, "most images are blended with another one"


def test_mixup_blends_class_weights_with_the_images() -> None:
    weights = {0: 1.0, 1: 2.0, 2: 4.0, 3: 8.0}
    ((_, targets, sample_weights),) = _one_pass(8, batch_size=8, class_weight=weights)
    # A blend of two classes weighs what its target says of each: the target-weighted class weight.
    expected = targets @ np.array([weights[c] for c in range(4)], dtype=np.float32)
    np.testing.assert_allclose(sample_weights, expected, rtol=1e-5)


def _tiny_model() -> Any:
    import keras

    inputs = keras.Input(shape=(16,))
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs))


def test_compile_and_fit_trains_on_blends_only_when_asked() -> None:
    import keras

    rng = np.random.default_rng(0)
    inputs, labels = rng.random((40, 16), dtype=np.float32), np.arange(40) % 4
    params = {"batch_size": 8, "epochs": 2, "learning_rate": 1e-2, "schedule": "cosine"}
    plain, mixed = _tiny_model(), _tiny_model()
    keras_runtime.compile_and_fit(plain, inputs, labels, None, params)
    history = keras_runtime.compile_and_fit(mixed, inputs, labels, (inputs, labels), {**params, "mixup_alpha": 0.2})
    assert not isinstance(plain.loss, keras.losses.CategoricalCrossentropy)
    assert isinstance(mixed.loss, keras.losses.CategoricalCrossentropy), "blended targets need one-hot loss"
    assert len(history["accuracy"]) == 2 and len(history["val_accuracy"]) == 2
    with pytest.raises(ValueError, match="mixup_alpha"):
        keras_runtime.compile_and_fit(_tiny_model(), inputs, labels, None, {**params, "mixup_alpha": -1})


def test_cnn_trains_with_mixup_and_class_weights() -> None:
    layout = discover(SAMPLE_DATA_DIR)
    pixels, labels = load_arrays(layout.train, 32), layout.train.labels
    family = get_family("cnn")
    params = {**family.default_params(), "epochs": 2, "mixup_alpha": 0.2, "test_time_flip": False}
    weighted = {**params, "class_weight": {0: 1.0, 1: 2.0, 2: 1.0, 3: 1.0}}
    fitted = family.fit(pixels, labels, weighted, family.contract(32))
    assert len(fitted.history["loss"]) == 2
    probabilities = family.predict_native(fitted, pixels)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_weight_decay_reaches_the_optimizer_and_shrinks_the_weights() -> None:
    rng = np.random.default_rng(0)
    inputs, labels = rng.random((40, 16), dtype=np.float32), np.arange(40) % 4
    params = {"batch_size": 8, "epochs": 3, "learning_rate": 1e-2, "optimizer": "adamw", "schedule": "cosine"}
    norms = {}
    for decay in (None, 5.0):
        keras_runtime.seed_everything(0)
        model = _tiny_model()
        keras_runtime.compile_and_fit(model, inputs, labels, None, {**params, "weight_decay": decay})
        expected = 0.0 if decay is None else decay  # no weight_decay: no decay, AdamW included
        assert model.optimizer.weight_decay == pytest.approx(expected)
        norms[decay] = float(np.linalg.norm(model.layers[-1].get_weights()[0]))
    assert norms[5.0] < 0.9 * norms[None], "a strong decay pulls the weights towards zero"
    with pytest.raises(ValueError, match="weight_decay"):
        keras_runtime.make_optimizer("adam", 1e-3, -0.1)


def test_training_noise_has_a_sigma_per_image_within_the_input_range() -> None:
    keras_runtime.seed_everything(3)
    count, top = 64, 1.0
    images, labels = np.full((count, 16, 16, 1), 0.5, np.float32), np.arange(count) % 4
    batches = keras_runtime.mixup_batches(images, labels, 4, 32, 0.0, seed=3, noise=(0.1, top))
    noisy = np.concatenate([np.asarray(batch[0]) for batch in batches])
    sigmas = (noisy - 0.5).reshape(count, -1).std(axis=1)
    assert noisy.min() >= 0.0 and noisy.max() <= top
    assert sigmas.max() < 0.12 and sigmas.min() < 0.03 < 0.07 < sigmas.max(), "each image its own sigma up to 0.1"
    targets = np.concatenate([np.asarray(batch[1]) for batch in batches])
    assert set(targets.max(axis=1)) == {1.0}, "alpha 0: nothing is blended"
