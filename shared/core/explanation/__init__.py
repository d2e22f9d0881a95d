"""Explanations of one classifier's answer for one slice: which regions of the head support the class and which
argue against it.

Both methods ask the model about copies of the slice with regions hidden (``shared.core.masking``):

- ``occlusion``: a patch slides over the head (a grid and the grid shifted); deterministic, the default.
- ``lime``: SLIC superpixels inside the head, random subsets hidden, LIME's weighted linear fit; seeded.

``regions`` draws the label maps, ``result`` holds the answer, ``overlay`` paints it over the scan and
``inprocess`` runs a model in process on the copies (training's overlays, tests, benchmarks); the explainer
service sends the copies to the inference service instead. The package imports nothing heavy here: ``regions``
needs scikit-image and ``lime`` needs lime (and so scikit-learn), the ``[explain]`` extra.
"""
