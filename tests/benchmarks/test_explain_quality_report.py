"""The section benchmarks.explain_quality writes: tables from the figures, and issue 28's verdicts."""

from __future__ import annotations

from benchmarks.explain_quality_report import MATCHED, Figures, render

HEADING = {
    "command": "python -m benchmarks.explain_quality --images test",
    "when": "2026-12-07 10:00 UTC, x86_64, 2 CPUs",
    "images": "2 per class (8), drawn with seed 0 from the test split of Training/ (test_files_sha256 e3e319d3)",
    "lime": "cnn, ensemble",
    "occlusion": "8x2",
    "minutes": "1.0",
    "pinned": "cnn v1, mobilenetv2 v2",
}


def figures(model: str, deletion: float, random: float, seconds: list[float], lime: bool = True) -> Figures:
    found = Figures(model, "1", 96, 2)
    for method in ("occlusion", "lime") if lime else ("occlusion",):
        found.add(("regions", method), 40.0)
        found.add(("regions", method), 52.0)
        for fill in ("grey", "blur"):
            for value in (deletion - 0.05, deletion + 0.05):
                found.add(("deletion", method, fill, "method"), value + (0.1 if method == "lime" else 0.0))
                found.add(("deletion", method, fill, "random"), random)
                found.add(("insertion", method, fill, "method"), 0.8)
                found.add(("insertion", method, fill, "random"), 0.4)
        found.add(("rim_top", method), 0.1)
        found.add(("outside", method), 0.0)
        found.add(("outside", method), 0.0)
        found.add(("agrees", method), 1.0)
        for value in seconds:
            found.add(("seconds", method), value)
    found.add(("rim_head",), 0.3)
    found.add(("deterministic", "occlusion"), 1.0)
    found.add(("deterministic", "occlusion"), 1.0)
    if lime:
        found.add(("stability", "lime"), 0.5)
        found.add(("stability", "lime"), 0.7)
        found.add(("fit_r2", "lime"), 0.6)
    return found


def test_the_tables_carry_every_figure() -> None:
    text = render([figures("cnn", 0.4, 0.8, [0.5, 0.7]), figures("mobilenetv2", 0.5, 0.6, [1.0], lime=False)], HEADING)
    assert HEADING["command"] in text and "e3e319d3" in text and "cnn v1, mobilenetv2 v2" in text
    assert "both with the grey fill, the default" in text
    assert "LIME, measured on cnn, ensemble:" in text
    assert "| cnn v1 | occlusion | grey | 0.400 | 0.800 | 0.50 | 0.800 | 0.400 | 2.00 |" in text
    assert "| cnn v1 | lime | blur | 0.500 | 0.800 | 0.62 |" in text
    assert "| cnn v1 | lime | 40-52 | 0.60 (min 0.50) | 0.10 | 0.30 | 0.00 | 1.00 | 0.60 |" in text
    assert "no seed; same weights twice on 2/2" in text
    assert "| mobilenetv2 v1 | lime |" not in text


def test_verdicts_follow_the_issue_s_bounds() -> None:
    text = render([figures("cnn", 0.4, 0.8, [0.5, 0.7, 0.9]), figures("ensemble", 0.5, 0.6, [2.5, 3.0])], HEADING)
    assert "- cnn, grey fill: default method (occlusion) deletion AUC 0.400 vs 0.75 x random 0.600: met" in text
    assert "LIME's 0.500 (not lower)" in text
    assert "- cnn: occlusion's top-5 area in the rim 0.10 vs the rim's share of the head 0.30: met." in text
    assert "- cnn: images with a region outside the head 0.00: met." in text
    assert (
        "- ensemble, blur fill: default method (occlusion) deletion AUC 0.500 vs 0.75 x random 0.450: NOT met" in text
    )
    assert "- cnn: occlusion through the gateway, median 0.70 s vs 1 s: met." in text
    assert "- ensemble: occlusion through the gateway, median 2.75 s vs 2 s: NOT met." in text


def test_occlusion_asked_for_the_blur_fill_has_its_own_row_and_verdict() -> None:
    cnn = figures("cnn", 0.4, 0.8, [0.5])
    for value in (0.3, 0.5):
        cnn.add(("deletion", MATCHED, "blur", "method"), value)
        cnn.add(("insertion", MATCHED, "blur", "method"), 0.9)
    text = render([cnn, figures("ensemble", 0.5, 0.6, [1.5])], HEADING)
    assert "| cnn v1 | occlusion asked for fill=blur | blur | 0.400 | 0.800 | 0.50 | 0.900 | 0.400 | 2.25 |" in text
    assert "- cnn, blur fill, occlusion asked for fill=blur: deletion AUC 0.400 vs 0.600: met." in text
    assert "ensemble v1 | occlusion asked for" not in text and "ensemble, blur fill, occlusion asked" not in text


def test_the_heading_says_how_occlusion_ran() -> None:
    assert (
        "a patch one cell of a grid of 8 x 8 over the head, on that grid and on copies of it shifted by steps of 1/2"
        in render([figures("cnn", 0.4, 0.8, [0.5])], HEADING)
    )
    one_grid = render([figures("cnn", 0.4, 0.8, [0.5])], {**HEADING, "occlusion": "6x1"})
    assert "a patch one cell of a grid of 6 x 6 over the head;" in one_grid
