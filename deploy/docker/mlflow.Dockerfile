# syntax=docker/dockerfile:1
# The MLflow tracking server and model registry, with basic-auth: backend store on PostgreSQL (psycopg2),
# artifacts proxied to an S3-compatible store (boto3; MinIO in compose), so clients need no S3 credentials.
# The pins are pyproject.toml's [train] ones (a test checks they agree).
# Expected size: about 1 GB uncompressed (python:3.11-slim about 130 MB + mlflow[auth], psycopg2-binary and
# boto3 about 900 MB, measured from the installed packages' files).
# Build from the repository root: docker build -f deploy/docker/mlflow.Dockerfile -t bt-mlflow .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.8"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /app --create-home app
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
# The job-execution feature forks a pool of queue workers nothing here uses (as in deploy/processes.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /app
USER 10001:10001
EXPOSE 5000
# /health answers without credentials under basic-auth.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)"]
ENTRYPOINT ["mlflow-entrypoint.sh"]
CMD ["--host", "0.0.0.0", "--port", "5000", "--workers", "2"]
