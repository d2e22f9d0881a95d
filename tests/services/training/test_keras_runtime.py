"""The shared Keras training loop: mixup batches and the mixup path of compile_and_fit."""

from __future__ import annotations

import numpy as np

from services.training import keras_runtime
from services.training.families import get_family
from shared.dataset import SAMPLE_DATA_DIR, discover, load_arrays


def test_mixup_blends_each_image_with_a_partner_and_its_target_alike() -> None:
    count, classes = 12, 4
    # Image i is the unit vector e_i, so a blended image shows both weights and who its partner was.
    images, labels = np.eye(count, dtype=np.float32), np.arange(count) % classes
    batches = list(keras_runtime.mixup_batches(images, labels, classes, batch_size=count, alpha=0.4, seed=3))
    assert len(batches) == 1
    mixed, targets = (np.asarray(part) for part in batches[0])
    blended = 0
    for image, target in zip(mixed, targets, strict=True):
        order = np.argsort(image)[::-1]
        main, partner = int(order[0]), int(order[1])
        lam = float(image[main]) if image[partner] > 0 else 1.0
        assert lam >= 0.5 - 1e-6, "the original image stays dominant"
        np.testing.assert_allclose(image.sum(), 1.0, atol=1e-5)
        expected = lam * np.eye(classes)[labels[main]]
        if image[partner] > 0:
            blended += 1
            expected = expected + (1 - lam) * np.eye(classes)[labels[partner]]
        np.testing.assert_allclose(target, expected, atol=1e-5)
    assert blended > count // 2, "most images are blended with another one"
    assert sorted(int(np.argmax(image)) for image in mixed) == list(range(count)), "each image used once"


def test_mixup_blends_class_weights_with_the_images() -> None:
    count, classes = 8, 4
    images, labels = np.eye(count, dtype=np.float32), np.arange(count) % classes
    weights = {0: 1.0, 1: 2.0, 2: 4.0, 3: 8.0}
    batches = list(keras_runtime.mixup_batches(images, labels, classes, count, 0.4, seed=5, class_weight=weights))
    _, targets, sample_weights = (np.asarray(part) for part in batches[0])
    # A blend of two classes weighs what its target says of each: the target-weighted class weight.
    expected = targets @ np.array([weights[c] for c in range(classes)], dtype=np.float32)
    np.testing.assert_allclose(sample_weights, expected, rtol=1e-5)


def test_mixup_training_runs_with_and_without_class_weights() -> None:
    layout = discover(SAMPLE_DATA_DIR)
    pixels, labels = load_arrays(layout.train, 32), layout.train.labels
    family = get_family("cnn")
    params = {**family.default_params(), "epochs": 2, "mixup": 0.2, "test_time_flip": False}
    fitted = family.fit(pixels[::2], labels[::2], params, family.contract(32), (pixels[1::2], labels[1::2]))
    assert len(fitted.history["accuracy"]) == 2 and len(fitted.history["val_accuracy"]) == 2
    probabilities = family.predict_native(fitted, pixels[1::2])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    weighted = family.fit(
        pixels, labels, {**params, "class_weight": {0: 1.0, 1: 2.0, 2: 1.0, 3: 1.0}}, family.contract(32)
    )
    assert len(weighted.history["loss"]) == 2
