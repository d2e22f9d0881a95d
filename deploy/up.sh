#!/usr/bin/env bash
# Fresh machine (Python 3.11, pip) -> virtual environment -> the whole stack serving the pretrained bundle
# (shared/pretrained_bundle/; `--retrain` trains on the embedded sample instead).
# Settings come from the environment, e.g. BT_MOBILENETV2_WEIGHTS (ImageNet MobileNetV2 no-top .h5),
# BT_GATEWAY_PORT / BT_INFERENCE_PORT / BT_TRAINING_PORT / BT_MLFLOW_PORT, BT_STATE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
BT_EXTRAS=train . deploy/bootstrap.sh
# nginx in front cuts off slow clients and oversized bodies; without it (no root, no sudo) the stack still runs,
# its services on the public ports.
( BT_SYSTEM_PACKAGES="/usr/sbin/nginx:nginx" . deploy/system-packages.sh ) \
  || echo "nginx could not be installed: the services take the public ports themselves"
exec .venv/bin/python -m deploy.stack up "$@"
