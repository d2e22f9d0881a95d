#!/usr/bin/env bash
# The test command: installs what the tests need (virtual environment, the project with [dev],
# Debian's Chromium for the browser test) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
BT_EXTRAS=dev . deploy/bootstrap.sh
# The browser test drives Debian's Chromium through Playwright; no browser build is ever downloaded.
# Installed once (CI runs as root); a no-op when it is already there.
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian's chromium for the browser test ..."
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
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
