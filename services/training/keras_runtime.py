"""TensorFlow/Keras set-up shared by the Keras families: threads, seeds, quiet logs, ONNX export."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@lru_cache(maxsize=1)
def tensorflow(threads: int = 2) -> Any:
    """Import TensorFlow once with a thread budget that matches the machine (2 cores by default)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised by an earlier import; keep its settings
    return tf


def seed_everything(seed: int) -> None:
    import keras

    tensorflow()
    keras.utils.set_random_seed(seed)


def early_stopping(patience: int, has_validation: bool) -> Any:
    import keras

    return keras.callbacks.EarlyStopping(
        monitor="val_loss" if has_validation else "loss",
        patience=patience,
        restore_best_weights=True,
    )


def make_optimizer(name: str, learning_rate: Any) -> Any:
    """`learning_rate` is a number or a Keras schedule."""
    import keras

    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": lambda learning_rate: keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=1e-4),
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9),
        "rmsprop": keras.optimizers.RMSprop,
    }
    if name.lower() not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(optimizers)}")
    return optimizers[name.lower()](learning_rate=learning_rate)


def compile_and_fit(
    model: Any,
    inputs: np.ndarray,
    labels: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    params: dict[str, Any],
    *,
    optimizer: str | None = None,
    learning_rate: float | None = None,
    epochs: int | None = None,
    patience: int | None = None,
) -> dict[str, list[float]]:
    """The one training loop of every Keras model here, with sparse cross-entropy and one of two schedules:
    `plateau` (the default) halves the learning rate when validation loss stalls and stops early, restoring
    the best weights; `cosine` decays the rate to zero over the planned epochs and runs them all."""
    import keras

    batch_size, n_epochs = int(params["batch_size"]), int(epochs or params["epochs"])
    rate = learning_rate or params["learning_rate"]
    schedule = params.get("schedule", "plateau")
    if schedule == "cosine":
        # Decays to zero over the planned epochs: no plateau detection needed, and the last epochs
        # at a small rate are the ones that settle the weights.
        steps = max(int(np.ceil(len(inputs) / batch_size)) * n_epochs, 1)
        rate = keras.optimizers.schedules.CosineDecay(rate, steps)
    elif schedule != "plateau":
        raise ValueError(f"unknown schedule {schedule!r}; expected plateau or cosine")
    mixup = float(params.get("mixup", 0.0))
    if mixup > 0:
        # Mixed pairs of images with mixed one-hot targets: a regulariser that keeps every image's
        # geometry (shifts and zooms cost accuracy here, docs/benchmarks.md).
        n_classes = int(model.output_shape[-1])
        loss: Any = keras.losses.CategoricalCrossentropy(label_smoothing=float(params.get("label_smoothing", 0.0)))
        metrics: list[Any] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    model.compile(
        optimizer=make_optimizer(optimizer or params.get("optimizer", "adam"), rate),
        loss=loss,
        metrics=metrics,
    )
    stop_patience = int(patience if patience is not None else params.get("patience", 3))
    # A cosine schedule runs its planned epochs: its last, low-rate epochs are the ones that settle the
    # weights, and validation loss (what early stopping watches) rises there while accuracy still climbs.
    callbacks = [] if schedule == "cosine" else [early_stopping(stop_patience, validation is not None)]
    if validation is not None and stop_patience > 2 and schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(stop_patience // 2, 1))
        )
    if mixup > 0:
        seed = int(params.get("seed", 0))
        train_data = mixup_batches(inputs, labels, n_classes, batch_size, mixup, seed, params.get("class_weight"))
        if validation is not None:
            validation = (validation[0], np.eye(n_classes, dtype=np.float32)[validation[1]])
        history = model.fit(
            train_data, validation_data=validation, epochs=n_epochs, callbacks=callbacks, shuffle=False, verbose=0
        )
        return history_dict(history)
    history = model.fit(
        inputs,
        labels,
        validation_data=validation,
        epochs=n_epochs,
        batch_size=batch_size,
        class_weight=params.get("class_weight"),
        callbacks=callbacks,
        verbose=0,
    )
    return history_dict(history)


def mixup_batches(
    inputs: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    alpha: float,
    seed: int,
    class_weight: dict[int, float] | None = None,
) -> Any:
    """Shuffled batches in which each image is blended with another of the batch, weight lam ~ Beta(alpha,
    alpha) folded to >= 0.5 (the original stays dominant), and the one-hot targets blended alike. With
    `class_weight`, each blend also carries the blend of its two images' class weights as sample weight."""
    tf = tensorflow()
    onehot = np.eye(n_classes, dtype=np.float32)[labels]
    columns: tuple[np.ndarray, ...] = (inputs, onehot)
    if class_weight:
        weight_of = np.array([class_weight.get(c, 1.0) for c in range(n_classes)], dtype=np.float32)
        columns = (inputs, onehot, weight_of[labels])
    batches = (
        tf.data.Dataset.from_tensor_slices(columns)
        .shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )

    def blend(images: Any, targets: Any, *weights: Any) -> tuple[Any, ...]:
        count = tf.shape(images)[0]
        first, second = tf.random.gamma([count], alpha), tf.random.gamma([count], alpha)
        lam = first / (first + second)
        lam = tf.maximum(lam, 1.0 - lam)
        partner = tf.random.shuffle(tf.range(count))
        image_lam = tf.reshape(lam, [-1] + [1] * (len(inputs.shape) - 1))
        mixed_images = image_lam * images + (1.0 - image_lam) * tf.gather(images, partner)
        mixed_targets = lam[:, None] * targets + (1.0 - lam[:, None]) * tf.gather(targets, partner)
        mixed = (mixed_images, mixed_targets)
        return (*mixed, lam * weights[0] + (1.0 - lam) * tf.gather(weights[0], partner)) if weights else mixed

    return batches.map(blend, num_parallel_calls=1).prefetch(2)


def keras_to_onnx(model: Any, input_shape: tuple[int | None, ...], input_name: str) -> Any:
    """Convert a Keras model whose output layer is named 'probabilities' with tf2onnx."""
    import tf2onnx

    tf = tensorflow()
    signature = [tf.TensorSpec(input_shape, tf.float32, name=input_name)]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
    return proto


def predict_batches(model: Any, tensor: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Model inference without Keras's predict() overhead per call."""
    parts = [np.asarray(model(tensor[i : i + batch_size], training=False)) for i in range(0, len(tensor), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)


def history_dict(history: Any) -> dict[str, list[float]]:
    return {key: [float(v) for v in values] for key, values in history.history.items()}
