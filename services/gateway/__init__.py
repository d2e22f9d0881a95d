"""The public API gateway: one entry point in front of the inference and explainer services."""
