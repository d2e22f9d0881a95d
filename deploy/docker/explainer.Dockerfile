# syntax=docker/dockerfile:1
# The explainer: LIME explanations, judged by inference's /v1/ood and classified by its predict-pixels, over HTTP.
# Installs the [explain] extra (LIME, scikit-image, scikit-learn): no TensorFlow, no onnxruntime.
# Expected size: about 575 MB uncompressed (python:3.11-slim about 130 MB + the [explain] closure about 445 MB,
# measured from the installed packages' files; scipy 143 MB, numpy 71 MB, scikit-learn 48 MB).
# Build from the repository root: docker build -f deploy/docker/explainer.Dockerfile -t bt-explainer .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN /opt/venv/bin/pip install ".[explain]"

FROM ${PYTHON_IMAGE}
# A fixed uid/gid, so the Kubernetes securityContext (runAsUser 10001) and volume ownership agree.
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /app --create-home app
COPY --from=build /opt/venv /opt/venv
# matplotlib (pulled in by scikit-image) writes its font cache under MPLCONFIGDIR; /tmp stays writable.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    BT_EXPLAINER_HOST=0.0.0.0 \
    BT_EXPLAINER_PORT=8003
WORKDIR /app
USER 10001:10001
EXPOSE 8003
# Liveness only (/healthz). Python's urllib, because the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8003/healthz', timeout=2)"]
CMD ["python", "-m", "services.explainer"]
