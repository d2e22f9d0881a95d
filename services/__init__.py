"""The three FastAPI services: training, inference and the public gateway."""
