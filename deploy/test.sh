#!/usr/bin/env bash
# The test command: installs what the tests need (virtual environment, the project with [dev],
# Debian's packages below) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
BT_EXTRAS=dev . deploy/bootstrap.sh
# Debian's packages the tests run for real: Chromium (the browser test, driven by Playwright; no browser build
# is ever downloaded), nginx (the proxy in front of the services), PostgreSQL (MLflow's backend store) and
# docker-compose (which parses the compose file; no Docker engine runs here), Orthanc with its DICOMweb plugin (the
# PACS of the DICOMweb tests) and dicom3tools (dciodvfy checks the reports). Installed once; no-ops after.
BT_SYSTEM_PACKAGES="/usr/bin/chromium:chromium /usr/sbin/nginx:nginx docker-compose:docker-compose
  /usr/lib/postgresql/15/bin/initdb:postgresql /usr/sbin/Orthanc:orthanc
  /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb /usr/bin/dciodvfy:dicom3tools" . deploy/system-packages.sh
.venv/bin/python -m ruff check .
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
