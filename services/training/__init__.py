"""Training: data folder -> four model families -> ONNX -> MLflow model registry."""
