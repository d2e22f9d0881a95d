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
    model.compile(
        optimizer=make_optimizer(optimizer or params.get("optimizer", "adam"), rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stop_patience = int(patience if patience is not None else params.get("patience", 3))
    # A cosine schedule runs its planned epochs: its last, low-rate epochs are the ones that settle the
    # weights, and validation loss (what early stopping watches) rises there while accuracy still climbs.
    callbacks = [] if schedule == "cosine" else [early_stopping(stop_patience, validation is not None)]
    if validation is not None and stop_patience > 2 and schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(stop_patience // 2, 1))
        )
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
