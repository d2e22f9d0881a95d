#!/usr/bin/env bash
# The test command: installs what the tests need (virtual environment, the project with [dev],
# Debian's Chromium for the browser test) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
BT_EXTRAS=dev . deploy/bootstrap.sh
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
