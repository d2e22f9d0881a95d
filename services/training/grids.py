"""Hyper-parameter grids per family and search mode.

`seed` reproduces the original study's grids. `quick` is sized so that the four families together
search and refit on the full 5,708-image set within about 30 minutes on 2 CPU cores; see
docs/benchmarks.md for what each family costs. Each family trains at its own default input size
(forest and dense network 32 px, CNN 96 px, MobileNetV2 160 px) unless a grid or --image-size says
otherwise. Keys that are not model parameters:
`image_size` (the input size the family trains at), `scaling` (the contract's input scaling: unit or
image_max) and `balancing` (none, rotate, class_weight). A family's grid is a dict of lists (every
combination is tried) or a list of such dicts (the union of their combinations, as in ParameterGrid).
"""

from __future__ import annotations

from typing import Any

from sklearn.model_selection import ParameterGrid

Grid = dict[str, list[Any]] | list[dict[str, list[Any]]]

SEED_GRIDS: dict[str, Grid] = {
    "rf": {
        # The study's forest on plain pixels, whatever this project's defaults are.
        "forest": ["random_forest"],
        "augment": ["none"],
        "scaling": ["unit"],
        "n_estimators": list(range(10, 201, 20)),
        "max_depth": [None, 10, 20, 30],
        "min_samples_split": [2, 5, 10],
        "max_features": ["sqrt", "log2"],
    },
    "cnn": {
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
    },
    "snn": {
        "units": [128, 256, 512],
        "dropout": [0.3, 0.5],
        "activation": ["relu", "tanh"],
        "optimizer": ["adam", "sgd"],
        "batch_size": [32, 64],
        "epochs": [20],
    },
    "mobilenetv2": {
        "units": [128, 256],
        "dropout": [0.3],
        "learning_rate": [1e-3, 1e-4],
        "batch_size": [32],
        "epochs": [20, 40],
        "fine_tune_blocks": [0],
    },
}

QUICK_GRIDS: dict[str, Grid] = {
    "rf": [
        # The study's forest as earlier searches tuned it, against extra trees with two split sizes.
        {"forest": ["random_forest"], "max_features": [0.1]},
        {"forest": ["extra_trees"], "max_features": [0.1, 0.3]},
    ],
    "snn": {
        "units": [512],
        "dropout": [0.3],
        "balancing": ["none", "rotate", "class_weight"],
    },
    "cnn": {
        "architecture": ["study", "batchnorm"],
    },
    "mobilenetv2": {
        "units": [256, 512],
        "dropout": [0.3, 0.5],
    },
}

# Parameters applied while searching only (cheaper trials); the refit of the winner uses the defaults.
QUICK_SEARCH_OVERRIDES: dict[str, dict[str, Any]] = {
    # A third of the trees to rank the candidates, at a third of the cost; the refit grows all 300.
    "rf": {"n_estimators": 100},
    "snn": {"epochs": 20, "patience": 4},
    # Searched at 48 px, 32 filters, for 6 epochs; refit at its own 96 px, 48 filters, for 40.
    "cnn": {"image_size": 48, "filters": 32, "epochs": 6},
    # The head is searched on frozen features for 15 epochs; the winner is refit for 30 with the top
    # blocks fine-tuned.
    "mobilenetv2": {"fine_tune_blocks": 0, "epochs": 15},
}


def candidates(family: str, mode: str, max_trials: int | None = None) -> list[dict[str, Any]]:
    """The parameter sets to try, in a fixed order; capped at max_trials."""
    grids = {"seed": SEED_GRIDS, "quick": QUICK_GRIDS}[mode]
    trials = [dict(params) for params in ParameterGrid(grids[family])]
    return trials[:max_trials] if max_trials else trials


def search_overrides(family: str, mode: str) -> dict[str, Any]:
    return dict(QUICK_SEARCH_OVERRIDES.get(family, {})) if mode == "quick" else {}
