"""The inference service: ONNX models from the MLflow registry, served over HTTP.

Serving depends on onnxruntime and mlflow-skinny only; nothing here may import TensorFlow,
Keras, scikit-learn, LIME or the ONNX converters.
"""
