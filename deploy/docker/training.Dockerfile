# syntax=docker/dockerfile:1
# Training: the HTTP service (python -m services.training) and the command line (bt-train, used by the one-shot
# job in compose and the Kubernetes Job). Installs the [train] extra: TensorFlow (CPU), Keras, scikit-learn,
# the ONNX converters, LIME for the overlays it logs.
# Expected size: about 2.7 GB uncompressed (python:3.11-slim about 130 MB + the [train] closure about 2.5 GB,
# measured from the installed packages' files; tensorflow-cpu alone 1.3 GB).
# MobileNetV2 needs the ImageNet no-top weights as a mounted file (BT_TRAINING_MOBILENETV2_WEIGHTS): nothing is
# downloaded at run time; without it the other three families still train.
# Build from the repository root: docker build -f deploy/docker/training.Dockerfile -t bt-training .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN /opt/venv/bin/pip install ".[train]"

FROM ${PYTHON_IMAGE}
# A fixed uid/gid, so the Kubernetes securityContext (runAsUser 10001) and volume ownership agree.
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /app --create-home app
COPY --from=build /opt/venv /opt/venv
# Caches and reports under /app/var (a volume); the data folder is mounted read-only at /data.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    BT_TRAINING_HOST=0.0.0.0 \
    BT_TRAINING_PORT=8002 \
    BT_TRAINING_CACHE_DIR=/app/var/cache \
    BT_TRAINING_REPORT_DIR=/app/var/reports
WORKDIR /app
USER 10001:10001
RUN mkdir -p /app/var/cache /app/var/reports
EXPOSE 8002
# Liveness only (/healthz). Python's urllib, because the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/healthz', timeout=2)"]
CMD ["python", "-m", "services.training"]
