"""Running the product: the whole stack on one machine (MLflow, the four services, nginx in front, replicas,
PostgreSQL), the pretrained bundle registered into an empty registry, and the container and Kubernetes files."""
