"""Running the stack locally: MLflow server, the three services, first training on the sample."""
