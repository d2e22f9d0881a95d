"""Each family trains on real sample images, converts to ONNX, and the ONNX model agrees with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from services.training.config import TrainingSettings
from services.training.families import FittedModel, ModelFamily, get_family
from services.training.families.random_forest import FORESTS
from services.training.onnx_export import check_parity, embed_contract, onnx_probabilities
from shared.core.contract import CLASS_NAMES, METADATA_KEY, OUTPUT_NAME, PreprocessingContract
from shared.core.dataset import SAMPLE_DATA_DIR, discover, load_arrays

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    layout = discover(SAMPLE_DATA_DIR)
    return load_arrays(layout.train, IMAGE_SIZE), layout.train.labels


@pytest.mark.parametrize("family_name", ["rf", "snn", "cnn", "mobilenetv2"])
def test_family_trains_converts_and_agrees(
    family_name: str, sample: tuple[np.ndarray, np.ndarray], mobilenetv2_weights: Path
) -> None:
    pixels, labels = sample
    family = get_family(family_name, TrainingSettings(mobilenetv2_weights=mobilenetv2_weights))
    contract = family.contract(IMAGE_SIZE)
    params = {**family.default_params(), "seed": 1}
    if "epochs" in params:
        params["epochs"] = 2
    if family_name == "rf":
        params["n_estimators"] = 20
    fitted = family.fit(pixels[::2], labels[::2], params, contract, validation=(pixels[1::4], labels[1::4]))
    native = family.predict_native(fitted, pixels[1::2])
    assert native.shape == (len(pixels[1::2]), len(CLASS_NAMES))
    np.testing.assert_allclose(native.sum(axis=1), 1.0, atol=1e-5)

    model_bytes = embed_contract(family.to_onnx(fitted), contract, {"family": family_name})
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [contract.input_name]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    stored = PreprocessingContract.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert stored == contract
    parity = check_parity(native, onnx_probabilities(model_bytes, family.tensor(pixels[1::2], contract)))
    assert parity.passed, parity


def test_mobilenetv2_takes_raw_pixels_and_scales_inside(mobilenetv2_weights: Path) -> None:
    contract = get_family("mobilenetv2", TrainingSettings(mobilenetv2_weights=mobilenetv2_weights)).contract(IMAGE_SIZE)
    assert contract.scaling == "raw" and contract.layout == "nhwc"
    assert get_family("rf").contract(IMAGE_SIZE).layout == "flat"


@pytest.mark.parametrize("blocks", [0, 2])
def test_mobilenetv2_frozen_and_fine_tuned(
    blocks: int, sample: tuple[np.ndarray, np.ndarray], mobilenetv2_weights: Path
) -> None:
    pixels, labels = sample
    family = get_family("mobilenetv2", TrainingSettings(mobilenetv2_weights=mobilenetv2_weights))
    params = {**family.default_params(), "fine_tune_blocks": blocks, "epochs": 2, "fine_tune_epochs": 2}
    fitted = family.fit(pixels, labels, params, family.contract(IMAGE_SIZE), validation=(pixels[:20], labels[:20]))
    assert ("frozen_model" in fitted.extras) == (blocks > 0)
    if blocks:
        assert "fine_tune_loss" in fitted.history and fitted.extras["fine_tune_seconds"] > 0
        assert fitted.extras["fine_tune_kept"] in (0.0, 1.0), "chosen on the validation slice"
        base = fitted.native.get_layer("mobilenetv2_upper")
        trainable = [w for w in base.trainable_weights]
        assert trainable, "the top blocks are trainable"
        assert not any("bn" in w.path.lower() or "batch" in w.path.lower() for w in trainable), "BatchNorm frozen"
    with pytest.raises(ValueError, match="fine_tune_blocks"):
        family.fit(pixels, labels, {**params, "fine_tune_blocks": 99}, family.contract(IMAGE_SIZE))


def _onnx_agrees(family: ModelFamily, fitted: FittedModel, pixels: np.ndarray) -> None:
    model_bytes = embed_contract(family.to_onnx(fitted), fitted.contract, {})
    native = family.predict_native(fitted, pixels)
    parity = check_parity(native, onnx_probabilities(model_bytes, family.tensor(pixels, fitted.contract)))
    assert parity.passed, parity


def test_mobilenetv2_whole_network_with_flips_noise_and_mirror_averaging(
    sample: tuple[np.ndarray, np.ndarray], mobilenetv2_weights: Path
) -> None:
    pixels, labels = sample
    family = get_family("mobilenetv2", TrainingSettings(mobilenetv2_weights=mobilenetv2_weights))
    params = {**family.default_params(), "fine_tune_blocks": 16, "fine_tune_epochs": 1, "augment": "flip_noise"}
    params["test_time_flip"] = True
    assert not family.holds_out(params), "the whole network is kept: nothing is decided on a held-out slice"
    fitted = family.fit(pixels, labels, params, family.contract(IMAGE_SIZE))
    assert fitted.native.name.endswith("mirror_averaged") and fitted.extras["fine_tune_seconds"] > 0
    _onnx_agrees(family, fitted, pixels[:16])
    with pytest.raises(ValueError, match="unknown augment"):
        family.fit(pixels, labels, {**params, "augment": "light"}, family.contract(IMAGE_SIZE))


@pytest.mark.parametrize("augment", ["flip_noise", "light"])
def test_cnn_augmentation_is_left_out_of_the_served_graph(augment: str, sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("cnn")
    params = {**family.default_params(), "image_size": IMAGE_SIZE, "filters": 8, "epochs": 1, "augment": augment}
    fitted = family.fit(pixels, labels, params, family.contract(IMAGE_SIZE))
    first, again = family.predict_native(fitted, pixels[:16]), family.predict_native(fitted, pixels[:16])
    np.testing.assert_array_equal(first, again)  # no noise, rotation or zoom at inference
    _onnx_agrees(family, fitted, pixels[:16])


def test_missing_weights_name_the_setting(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    from shared.kit.errors import ServiceError

    family = get_family("mobilenetv2", TrainingSettings(mobilenetv2_weights=tmp_path / "absent.h5"))
    pixels, labels = sample
    with pytest.raises(ServiceError, match="BT_MOBILENETV2_WEIGHTS"):
        family.fit(pixels, labels, family.default_params(), family.contract(IMAGE_SIZE))


def test_cnn_study_architecture_converts_and_agrees(sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("cnn")
    contract = family.contract(IMAGE_SIZE)
    params = {**family.default_params(), "architecture": "study", "schedule": "plateau", "epochs": 1, "seed": 1}
    params["test_time_flip"] = False
    fitted = family.fit(pixels, labels, params, contract)
    assert any(layer.name.startswith("flatten") for layer in fitted.native.layers), "the study's dense head"
    assert not any("batch_normalization" in layer.name for layer in fitted.native.layers)
    model_bytes = embed_contract(family.to_onnx(fitted), contract, {"family": "cnn"})
    native = family.predict_native(fitted, pixels[:16])
    assert check_parity(native, onnx_probabilities(model_bytes, family.tensor(pixels[:16], contract))).passed


def test_cnn_rejects_what_it_cannot_build(sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("cnn")
    params = {**family.default_params(), "epochs": 1}
    with pytest.raises(ValueError, match="at least 64 px"):
        family.fit(pixels, labels, {**params, "blocks": 5}, family.contract(IMAGE_SIZE))
    for bad in ({"architecture": "resnet"}, {"schedule": "linear"}, {"augment": "rotate"}):
        with pytest.raises(ValueError, match="unknown"):
            family.fit(pixels, labels, {**params, **bad}, family.contract(IMAGE_SIZE))


def test_cosine_schedule_ends_near_zero(sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("cnn")
    params = {**family.default_params(), "epochs": 2, "learning_rate": 1e-3, "test_time_flip": False}
    fitted = family.fit(pixels, labels, params, family.contract(IMAGE_SIZE))
    optimizer = fitted.native.optimizer
    assert float(optimizer.learning_rate) < 1e-5, "decayed over the planned steps"
    assert len(fitted.history["loss"]) == 2


def test_forest_flip_augmentation_doubles_the_examples(sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("rf")
    params = {**family.default_params(), "n_estimators": 5, "bootstrap": False, "max_features": 1.0, "augment": "none"}
    plain = family.fit(pixels, labels, params, family.contract(IMAGE_SIZE))
    flipped = family.fit(pixels, labels, {**params, "augment": "flip"}, family.contract(IMAGE_SIZE))
    # Without bootstrap every tree sees every example: the root holds all of them.
    assert plain.native.estimators_[0].tree_.n_node_samples[0] == len(pixels)
    assert flipped.native.estimators_[0].tree_.n_node_samples[0] == 2 * len(pixels)
    with pytest.raises(ValueError, match="unknown augment"):
        family.fit(pixels, labels, {**params, "augment": "noise"}, family.contract(IMAGE_SIZE))


@pytest.mark.parametrize("forest", ["random_forest", "extra_trees"])
def test_both_forests_train_and_convert(forest: str, sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("rf")
    contract = family.contract(IMAGE_SIZE, "image_max")
    params = {**family.default_params(), "forest": forest, "n_estimators": 10}
    fitted = family.fit(pixels[::2], labels[::2], params, contract)
    assert type(fitted.native) is FORESTS[forest]
    assert len(fitted.native.estimators_) == 10, "the forest's own parameters reach scikit-learn"
    model_bytes = embed_contract(family.to_onnx(fitted), contract, {"family": "rf"})
    exported = onnx_probabilities(model_bytes, family.tensor(pixels[1::2], contract))
    parity = check_parity(family.predict_native(fitted, pixels[1::2]), exported)
    assert parity.passed, parity
    with pytest.raises(ValueError, match="unknown forest"):
        family.fit(pixels, labels, {**params, "forest": "jungle"}, contract)


def test_each_family_names_the_parameters_it_reads() -> None:
    from services.training.options import TrainingOptions

    forest, cnn, snn = (get_family(name).accepted_params() for name in ("rf", "cnn", "snn"))
    assert {"bootstrap", "max_features", "forest", "seed"} <= forest, "scikit-learn's own arguments too"
    assert not {"random_state", "n_jobs", "epochs"} & forest, "set by the family, or not a forest's"
    assert {"mixup_alpha", "schedule", "epochs", "seed"} <= cnn & snn, "the shared Keras loop's parameters"
    assert TrainingOptions(families=["rf", "cnn"], overrides={"epochs": 3, "bootstrap": False}).overrides
    with pytest.raises(ValueError, match="max_feature"):
        TrainingOptions(families=["rf"], overrides={"max_feature": 0.2})


def test_cnn_serves_the_mean_over_the_mirror_image(sample: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = sample
    family = get_family("cnn")
    contract = family.contract(IMAGE_SIZE)
    fitted = family.fit(pixels, labels, {**family.default_params(), "epochs": 1, "seed": 2}, contract)
    probabilities = family.predict_native(fitted, pixels[:12])
    mirrored = family.predict_native(fitted, pixels[:12, :, ::-1])
    np.testing.assert_allclose(probabilities, mirrored, atol=1e-5)
    model_bytes = embed_contract(family.to_onnx(fitted), contract, {"family": "cnn"})
    onnx_mirrored = onnx_probabilities(model_bytes, family.tensor(np.ascontiguousarray(pixels[:12, :, ::-1]), contract))
    assert check_parity(probabilities, onnx_mirrored).passed


def test_only_families_that_watch_a_slice_hold_one_out() -> None:
    cnn, snn, forest = get_family("cnn"), get_family("snn"), get_family("rf")
    assert not cnn.holds_out(cnn.default_params()), "a cosine schedule runs its planned epochs"
    assert cnn.holds_out({**cnn.default_params(), "schedule": "plateau"}), "plateau stops early on validation loss"
    assert snn.holds_out(snn.default_params()) and not forest.holds_out(forest.default_params())
    mobilenet = get_family("mobilenetv2")
    frozen = {**mobilenet.default_params(), "fine_tune_blocks": 0}
    assert not mobilenet.holds_out(frozen)
    assert mobilenet.holds_out({**frozen, "schedule": "plateau"}), "its head's early stopping watches it"
    assert mobilenet.holds_out({**frozen, "fine_tune_blocks": 4}), "fine-tuning must beat the frozen base on it"
