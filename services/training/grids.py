"""The parameter sets a search tries, from the family's own grids and the search mode.

`seed` reproduces the original study's grids (`ModelFamily.seed_grid`). `quick` (`quick_grid`) is sized
so that the four families together search and refit on the full 5,708-image set within about 30 minutes
on 2 CPU cores, with `quick_search_overrides` making each trial cheaper than the refit; see
docs/benchmarks.md for what each family costs. Each family trains at its own default input size unless a
grid or --image-size says otherwise. Keys that are not model parameters: `image_size` (the input size the
family trains at), `scaling` (the contract's input scaling: unit or image_max) and `balancing` (none,
rotate, class_weight).
"""

from __future__ import annotations

from typing import Any

from sklearn.model_selection import ParameterGrid

from services.training.families.base import Grid, ModelFamily


def family_grid(family: ModelFamily, mode: str) -> Grid:
    grids = {"seed": family.seed_grid, "quick": family.quick_grid}
    if mode not in grids:
        raise ValueError(f"unknown search mode {mode!r}; expected one of {sorted(grids)}")
    return grids[mode]


def candidates(family: ModelFamily, mode: str, max_trials: int | None = None) -> list[dict[str, Any]]:
    """The parameter sets to try, in a fixed order; capped at max_trials."""
    trials = [dict(params) for params in ParameterGrid(family_grid(family, mode))]
    return trials[:max_trials] if max_trials else trials


def search_overrides(family: ModelFamily, mode: str) -> dict[str, Any]:
    """Parameters applied to every trial of this search mode only."""
    return dict(family.quick_search_overrides) if mode == "quick" else {}
