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


def make_optimizer(name: str, learning_rate: Any, weight_decay: float | None = None) -> Any:
    """`learning_rate` is a number or a Keras schedule. `weight_decay` is decoupled (Keras multiplies it by
    the current learning rate at each step); None means none, for every optimizer."""
    import keras

    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": lambda **kwargs: keras.optimizers.SGD(momentum=0.9, **kwargs),
        "rmsprop": keras.optimizers.RMSprop,
    }
    key = name.lower()
    if key not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(optimizers)}")
    if weight_decay is None and key == "adamw":
        # Keras's AdamW needs a number. Not its own 0.004: a family that wants decay says how much (the CNN's
        # defaults do), and the 1e-4 this code once defaulted to shrank weights by 1e-7 a step, as good as 0.
        weight_decay = 0.0
    if weight_decay is not None and weight_decay < 0:
        raise ValueError(f"weight_decay must be 0 or positive, got {weight_decay}")
    return optimizers[key](learning_rate=learning_rate, weight_decay=weight_decay)


def watches_validation(params: dict[str, Any]) -> bool:
    """Whether compile_and_fit would watch validation data: only the plateau schedule does (a cosine schedule
    runs its planned epochs)."""
    return params.get("schedule", "plateau") != "cosine"


# The parameters compile_and_fit reads, whichever Keras family calls it.
TRAINING_LOOP_PARAMS = frozenset(
    {
        "batch_size",
        "epochs",
        "learning_rate",
        "optimizer",
        "weight_decay",
        "schedule",
        "patience",
        "mixup_alpha",
        "class_weight",
    }
)


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
    noise: tuple[float, float] | None = None,
) -> dict[str, list[float]]:
    """The one training loop of every Keras model here, with cross-entropy and one of two schedules:
    `plateau` (the default) halves the learning rate when validation loss stalls and stops early, restoring
    the best weights; `cosine` decays the rate to zero over the planned epochs and runs them all.
    `mixup_alpha` > 0 trains on blended pairs of images (`mixup_batches`) with one-hot targets; `noise`
    (largest sigma, largest input value) adds Gaussian noise to the training batches (`mixup_batches` too)."""
    import keras

    batch_size, n_epochs = int(params["batch_size"]), int(epochs or params["epochs"])
    schedule = params.get("schedule", "plateau")
    steps = max(int(np.ceil(len(inputs) / batch_size)) * n_epochs, 1)
    rate = learning_rate_schedule(learning_rate or params["learning_rate"], schedule, steps)
    mixup_alpha = float(params.get("mixup_alpha", 0.0))
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be 0 (off) or positive, got {mixup_alpha}")
    n_classes = int(model.output_shape[-1])
    batched = mixup_alpha > 0 or noise is not None
    if batched:
        # Mixup: a regulariser that keeps every image's geometry, unlike shifts, rotations and zooms, which cost
        # accuracy here (docs/benchmarks.md). Blended targets (and the batch pipeline) need the one-hot loss.
        loss: Any = keras.losses.CategoricalCrossentropy()
        metrics: list[Any] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    model.compile(
        optimizer=make_optimizer(optimizer or params.get("optimizer", "adam"), rate, params.get("weight_decay")),
        loss=loss,
        metrics=metrics,
    )
    callbacks = training_callbacks(params, validation is not None)
    if batched:
        batches = mixup_batches(
            inputs,
            labels,
            n_classes,
            batch_size,
            mixup_alpha,
            int(params.get("seed", 0)),
            params.get("class_weight"),
            noise,
        )
        if validation is not None:
            validation = (validation[0], one_hot(validation[1], n_classes))
        # shuffle=False: the batches are already shuffled by mixup_batches (Keras warns otherwise).
        data: dict[str, Any] = {"x": batches, "shuffle": False}
    else:
        data = {"x": inputs, "y": labels, "batch_size": batch_size, "class_weight": params.get("class_weight")}
    history = model.fit(**data, validation_data=validation, epochs=n_epochs, callbacks=callbacks, verbose=0)
    return history_dict(history)


def learning_rate_schedule(rate: float, schedule: str, steps: int) -> Any:
    """The optimizer's learning rate: the number itself (`plateau`), or a cosine decay to zero over `steps`."""
    import keras

    if schedule == "cosine":
        # Decays to zero over the planned epochs: no plateau detection needed, and the last epochs
        # at a small rate are the ones that settle the weights.
        return keras.optimizers.schedules.CosineDecay(rate, steps)
    if schedule != "plateau":
        raise ValueError(f"unknown schedule {schedule!r}; expected plateau or cosine")
    return rate


def training_callbacks(params: dict[str, Any], has_validation: bool) -> list[Any]:
    """Early stopping and learning-rate halving on a plateau of validation loss; none under a cosine schedule."""
    import keras

    if not watches_validation(params):
        # A cosine schedule runs its planned epochs: its last, low-rate epochs are the ones that settle the
        # weights, and validation loss (what early stopping watches) rises there while accuracy still climbs.
        return []
    stop_patience = int(params.get("patience", 3))
    callbacks = [early_stopping(stop_patience, has_validation)]
    if has_validation and stop_patience > 2:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(stop_patience // 2, 1))
        )
    return callbacks


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]


def mixup_batches(
    inputs: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    alpha: float,
    seed: int,
    class_weight: dict[int, float] | None = None,
    noise: tuple[float, float] | None = None,
) -> Any:
    """Shuffled batches in which each image is blended with another of the batch, weight lam ~ Beta(alpha,
    alpha) folded to >= 0.5 (the original stays dominant), and the one-hot targets blended alike (alpha 0:
    no blending). With `class_weight`, each blend also carries the blend of its two images' class weights as
    sample weight. With `noise` (largest sigma, largest input value), each image then gets Gaussian noise of
    its own sigma, uniform between 0 and the largest, clipped to the input's range: a noisy scan is clipped
    too, and a sigma that varies keeps clean images in the mix (one fixed sigma on every image cost 1.4
    points of clean accuracy, docs/experiments.md). `seed` orders the batches; the blend weights, partners
    and noise follow TensorFlow's global seed (`seed_everything`)."""
    tf = tensorflow()
    # One copy of the images; batches are gathered by shuffled index (no shuffle buffer of images).
    images = tf.constant(inputs)
    targets = tf.constant(one_hot(labels, n_classes))
    weight_of = np.array([(class_weight or {}).get(c, 1.0) for c in range(n_classes)], dtype=np.float32)
    weights = tf.constant(weight_of[labels])

    def blend(indices: Any) -> tuple[Any, ...]:
        count = tf.shape(indices)[0]
        partner = tf.gather(indices, tf.random.shuffle(tf.range(count)))
        if alpha > 0:
            first, second = tf.random.gamma([count], alpha), tf.random.gamma([count], alpha)
            lam = tf.maximum(first / (first + second), second / (first + second))
        else:
            lam = tf.ones([count])
        image_lam = tf.reshape(lam, [-1] + [1] * (len(inputs.shape) - 1))
        mixed_images = image_lam * tf.gather(images, indices) + (1.0 - image_lam) * tf.gather(images, partner)
        if noise is not None:
            sigma = tf.random.uniform(tf.shape(image_lam), 0.0, noise[0])
            mixed_images = tf.clip_by_value(
                mixed_images + sigma * tf.random.normal(tf.shape(mixed_images)), 0.0, noise[1]
            )
        column_lam = lam[:, None]
        mixed_targets = column_lam * tf.gather(targets, indices) + (1.0 - column_lam) * tf.gather(targets, partner)
        if not class_weight:
            return mixed_images, mixed_targets
        mixed_weights = lam * tf.gather(weights, indices) + (1.0 - lam) * tf.gather(weights, partner)
        return mixed_images, mixed_targets, mixed_weights

    order = tf.data.Dataset.range(len(inputs)).shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
    return order.batch(batch_size).map(blend, num_parallel_calls=1).prefetch(2)


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
