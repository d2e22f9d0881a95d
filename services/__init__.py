"""The four FastAPI services: training, inference (the data plane that serves every registered model), the
explainer (LIME) and the public gateway. No service imports another; what they share is in ``shared``."""
