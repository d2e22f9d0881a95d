"""Small CNN (Keras). Two architectures:

- `study`: the original study's three Conv2D + max-pooling blocks with doubling filters, flattened into
  two dense layers;
- `batchnorm` (default): a stride-2 stem, then Conv2D + batch normalisation + max-pooling blocks with
  doubling filters and a global-average-pooling head: on 2 CPU cores it reads 96 px images faster than
  `study` reads 64 px ones. Why the defaults are what they are: docs/model-families.md.
"""

from __future__ import annotations

from typing import Any

from services.training.families.keras_family import TRAINING_NOISE_SIGMA, KerasFamily, mirror_averaged
from shared.core.contract import OUTPUT_NAME, PreprocessingContract

ARCHITECTURES = ("study", "batchnorm")
AUGMENTS = ("none", "flip", "flip_noise", "light")
ROTATION_DEGREES = 10.0
ZOOM = 0.05  # up to 5% in or out
CONTRAST = 0.1


class SmallCnnFamily(KerasFamily):
    title = "Small CNN"
    layout = "nhwc"
    study_accuracy = 0.952
    seed_grid = {
        # The study's network and training recipe (plain optimisers, no decay), whatever this project's defaults are.
        "architecture": ["study"],
        "schedule": ["plateau"],
        "augment": ["none"],
        "mixup_alpha": [0.0],
        "test_time_flip": [False],
        "weight_decay": [0.0],
        "optimizer": ["adam", "sgd", "rmsprop"],
        "dropout": [0.3, 0.5, 0.7],
        "activation": ["relu", "tanh", "sigmoid"],
        "filters": [16, 32],
        "kernel_size": [3],
        "batch_size": [16, 32],
        "epochs": [5, 10],
    }
    # The architecture is not searched: 48 px trials ranked the study's network first where 96 px validation
    # slices put it 2 points behind, and its 96 px refit costs several times the budget (docs/model-families.md).
    quick_grid = {"dropout": [0.3, 0.5]}
    # Searched at 48 px, 32 filters, for 6 epochs; refit at its own 96 px, 48 filters, for 40.
    quick_search_overrides = {"image_size": 48, "filters": 32, "epochs": 6}

    def default_params(self) -> dict[str, Any]:
        return {
            "image_size": 96,
            "architecture": "batchnorm",
            "blocks": 4,
            "filters": 48,
            "kernel_size": 3,
            "activation": "relu",
            "dropout": 0.3,
            "dense_units": 128,
            "optimizer": "adamw",
            "learning_rate": 1e-3,
            # Keras multiplies AdamW's decay by the learning rate: it takes the usual 0.05 to regularise at all.
            "weight_decay": 0.05,
            "schedule": "cosine",
            "batch_size": 32,
            # The cosine schedule spreads its decay over all of them (no early stopping).
            "epochs": 40,
            # Left-right flips of the training batches only (the layer is inactive at inference): a brain slice
            # mirrored is still a plausible slice of the same class. And Gaussian noise, each training image its
            # own sigma up to 12 on 0-255: without it, noise of sigma 10 on the input cost 14 points of
            # validation accuracy; with it 0.7, for the same clean accuracy (docs/experiments.md).
            "augment": "flip_noise",
            # Each training image blended with another (weight >= 0.5) and the targets alike: a regulariser
            # that keeps the geometry, which the network reads (the dataset's sources differ in framing).
            "mixup_alpha": 0.2,
            # Serve the mean of the predictions for the image and its mirror image.
            "test_time_flip": True,
        }

    def serving_model(self, trained: Any, contract: PreprocessingContract, params: dict[str, Any]) -> Any:
        return mirror_averaged(trained, contract) if params.get("test_time_flip", False) else trained

    def training_noise(self, params: dict[str, Any], contract: PreprocessingContract) -> tuple[float, float] | None:
        if params.get("augment", "none") not in ("flip_noise", "light"):
            return None
        top = 255.0 if contract.scaling == "raw" else 1.0  # the network's input for a 255 pixel (image_max: <= 1)
        return TRAINING_NOISE_SIGMA * top / 255.0, top

    def build(self, contract: PreprocessingContract, params: dict[str, Any]) -> Any:
        import keras
        from keras import layers

        inputs = keras.Input(shape=contract.input_shape()[1:], name=contract.input_name)
        x = inputs
        for layer in _augmentation(params.get("augment", "none")):
            x = layer(x)
        architecture = params.get("architecture", "study")
        if architecture == "study":
            x = _study_body(x, params)
        elif architecture == "batchnorm":
            x = _batchnorm_body(x, params, contract.image_size)
        else:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
        outputs = layers.Dense(len(contract.class_names), activation="softmax", name=OUTPUT_NAME)(x)
        return keras.Model(inputs, outputs, name="cnn")


def _augmentation(augment: str) -> list[Any]:
    """The training-only layers of `augment` (Keras leaves them out at inference, so the served graph and its
    ONNX export are the plain network):

    - `flip`: left-right flips (a mirrored slice is still a plausible slice of the same class);
    - `flip_noise`: flips; the training batches also get Gaussian noise (`training_noise`: robustness to
      noisy scans);
    - `light`: flips, rotations up to ROTATION_DEGREES, zooms of ZOOM, contrast jitter of CONTRAST, and the
      noise (earlier, stronger geometric and intensity jitter cost accuracy: docs/benchmarks.md).
    """
    from keras import layers

    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {AUGMENTS}")
    if augment == "none":
        return []
    chain = [layers.RandomFlip("horizontal", name="augment_flip")]
    if augment == "light":
        chain += [
            # Zero fill: the slices lie on a black background, which a reflection would fill with tissue.
            layers.RandomRotation(ROTATION_DEGREES / 360, fill_mode="constant", name="augment_rotation"),
            layers.RandomZoom(ZOOM, fill_mode="constant", name="augment_zoom"),
            layers.RandomContrast(CONTRAST, name="augment_contrast"),
        ]
    return chain


def _study_body(x: Any, params: dict[str, Any]) -> Any:
    from keras import layers

    filters, kernel, activation = int(params["filters"]), int(params["kernel_size"]), params["activation"]
    for block in range(3):
        x = layers.Conv2D(filters * 2**block, kernel, padding="same", activation=activation)(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(int(params["dense_units"]), activation=activation)(x)
    x = layers.Dropout(float(params["dropout"]))(x)
    x = layers.Dense(max(int(params["dense_units"]) // 2, 16), activation=activation)(x)
    return layers.Dropout(float(params["dropout"]))(x)


def _batchnorm_body(x: Any, params: dict[str, Any], image_size: int) -> Any:
    from keras import layers

    filters, kernel, activation = int(params["filters"]), int(params["kernel_size"]), params["activation"]
    blocks = int(params.get("blocks", 4))
    if image_size < 2 ** (blocks + 1):
        raise ValueError(f"{blocks} blocks need images of at least {2 ** (blocks + 1)} px, got {image_size}")

    def conv_bn(x: Any, width: int, strides: int = 1) -> Any:
        # No bias: batch normalisation's offset takes its place.
        x = layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation(activation)(x)

    x = conv_bn(x, max(filters // 2, 8), strides=2)  # the stem halves the resolution at little cost
    for block in range(blocks):
        x = conv_bn(x, filters * 2**block)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(float(params["dropout"]))(x)
