"""benchmarks.explain_quality's in-process figures of one image, with a model run in process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from benchmarks.explain_faithfulness import STEPS, measure_order, strongest_first
from benchmarks.explain_quality_report import MATCHED, Figures
from benchmarks.explain_quality_run import FILLS, MaskedPredictor, ModelUnderTest, OcclusionGrid, measure_image
from deploy.processes import ManagedProcess
from shared.core.contract import CLASS_NAMES
from shared.core.dataset import SAMPLE_DATA_DIR
from shared.core.explanation.inprocess import pixels_predictor
from shared.core.explanation.occlusion import occlusion
from shared.core.explanation.regions import head_mask
from shared.core.imaging import decode_to_array
from tests.conftest import ModelZoo

SIZE = 64


def centre_model(noise: float = 0.0):
    """Class 0 grows with the texture (spread of brightness) of the slice's centre, which every fill takes away;
    ``noise``: a model that never answers the same twice."""
    rng = np.random.default_rng(0)

    def predict(batch: np.ndarray) -> np.ndarray:
        centre = np.minimum(batch[:, 24:40, 24:40].reshape(len(batch), -1).std(axis=1) / 64.0, 1.0)
        first = np.clip(0.1 + 0.8 * centre + noise * rng.random(len(batch)), 0.01, 0.97)
        rest = (1 - first)[:, None] * np.array([[0.5, 0.3, 0.2]])
        return np.concatenate([first[:, None], rest], axis=1)

    return predict


def measured(noise: float = 0.0, with_lime: bool = True) -> Figures:
    pixels = decode_to_array((SAMPLE_DATA_DIR / "glioma" / "glioma_000.jpg").read_bytes(), SIZE)
    figures = Figures("cnn", "1", SIZE, 1)
    measure_image(
        figures, "glioma_000.jpg", pixels, pixels_predictor(pixels, centre_model(noise)), CLASS_NAMES, with_lime
    )
    return figures


def test_one_image_gives_every_figure() -> None:
    figures = measured()
    for method in ("occlusion", "lime"):
        for fill in FILLS:
            own = figures.mean("deletion", method, fill, "method")
            assert own is not None and figures.mean("deletion", method, fill, "random") is not None
            assert figures.mean("insertion", method, fill, "method") is not None
        assert figures.mean("outside", method) == 0.0
        assert 0 < len(figures.top5[(method, "glioma_000.jpg")]) <= 5
        assert figures.values[("rim_top", method)]
    assert figures.mean("deterministic", "occlusion") == 1.0
    # Occlusion asked for the blur fill, measured with it; the default fill needs no second explanation.
    assert figures.mean("deletion", MATCHED, "blur", "method") is not None
    assert figures.mean("insertion", MATCHED, "blur", "method") is not None
    assert ("deletion", MATCHED, "grey", "method") not in figures.values
    assert 0.0 <= figures.mean("stability", "lime") <= 1.0
    assert 0.0 < figures.mean("rim_head") < 1.0
    # The model looks at the centre only: the method's ranking fades it faster than random orders do.
    assert figures.mean("deletion", "occlusion", "grey", "method") < figures.mean(
        "deletion", "occlusion", "grey", "random"
    )


def test_the_occlusion_grid_is_the_one_asked_for() -> None:
    pixels = decode_to_array((SAMPLE_DATA_DIR / "glioma" / "glioma_000.jpg").read_bytes(), SIZE)
    regions = {}
    for grid in (OcclusionGrid(4, 1), OcclusionGrid(8, 2)):
        figures = Figures("cnn", "1", SIZE, 1)
        predict = pixels_predictor(pixels, centre_model())
        measure_image(figures, "glioma_000.jpg", pixels, predict, CLASS_NAMES, False, grid)
        regions[grid] = figures.mean("regions", "occlusion")
    assert regions[OcclusionGrid(4, 1)] <= 16 < regions[OcclusionGrid(8, 2)]


def test_a_model_that_answers_differently_twice_is_caught() -> None:
    figures = measured(noise=0.05, with_lime=False)
    assert figures.mean("deterministic", "occlusion") == 0.0
    assert ("stability", "lime") not in figures.values


def test_the_served_model_answers_the_masked_copies(inference_server: ManagedProcess, model_zoo: ModelZoo) -> None:
    """MaskedPredictor asks the inference service: the all-kept row is its predict answer, and the curves of a
    ranking come back from one request."""
    path = SAMPLE_DATA_DIR / "glioma" / "glioma_000.jpg"
    trained = model_zoo.version("cnn", "2")
    under_test = ModelUnderTest("cnn", "2", trained.contract)
    with httpx.Client(base_url=inference_server.url, timeout=60.0, trust_env=False) as http:
        predict = MaskedPredictor(http, under_test, path)
        pixels = decode_to_array(path.read_bytes(), trained.contract.image_size)
        explanation = occlusion(pixels, predict, CLASS_NAMES)
        served = http.post("/v1/models/cnn/predict", params={"version": "2"}, files={"file": predict.upload})
        ranking = strongest_first(explanation.weights)
        found = measure_order(predict, explanation.labels, head_mask(pixels), ranking, explanation.label_index, "grey")
    expected = [served.json()["probabilities"][name] for name in CLASS_NAMES]
    assert explanation.probabilities == pytest.approx(expected, abs=1e-6)
    assert found.deletion[0] == 1.0 and len(found.insertion) == STEPS
    assert predict.copies == explanation.num_samples + 2 * STEPS
