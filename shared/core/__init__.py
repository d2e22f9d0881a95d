"""The imaging and model core: how an image becomes a model's input, and how a model is run.

The preprocessing contract (``contract``), bounded decoding of any image or DICOM file (``decoding``, ``imaging``,
``dicom``), the guard's input (``guard_input``), the one ONNX runner (``onnx_classifier``), the training folder
(``dataset``) and the explanations (``explanation``). Defined once, for training and for serving.
"""
