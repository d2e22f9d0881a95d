# syntax=docker/dockerfile:1
# Inference: onnxruntime serving of every registered version, models fetched from MLflow. Installs only the
# [serve] extra (onnxruntime, the MLflow client, pydicom): no TensorFlow, no scikit-learn, no LIME.
# Expected size: about 400 MB uncompressed (python:3.11-slim about 130 MB + the [serve] closure about 270 MB,
# measured from the installed packages' files; numpy 71 MB, onnxruntime 69 MB, mlflow-skinny 34 MB).
# Build from the repository root: docker build -f deploy/docker/inference.Dockerfile -t bt-inference .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN /opt/venv/bin/pip install ".[serve]"

FROM ${PYTHON_IMAGE}
# A fixed uid/gid, so the Kubernetes securityContext (runAsUser 10001) and volume ownership agree.
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /app --create-home app
COPY --from=build /opt/venv /opt/venv
# The verified ONNX cache lives under /app/var (a volume in compose, an emptyDir in Kubernetes): a restarted
# container downloads again from MLflow and checks every file.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BT_INFERENCE_HOST=0.0.0.0 \
    BT_INFERENCE_PORT=8001 \
    BT_INFERENCE_CACHE_DIR=/app/var/models
WORKDIR /app
USER 10001:10001
RUN mkdir -p /app/var/models
EXPOSE 8001
# Liveness only (/healthz): readiness (/readyz, a default model of each family loaded) is the orchestrator's.
# Python's urllib, because the slim image has no curl; 127.0.0.1 is one of the default trusted hosts.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
CMD ["python", "-m", "services.inference"]
