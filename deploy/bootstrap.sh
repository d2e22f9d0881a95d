# Sourced by up.sh and test.sh: a virtual environment in .venv with the project installed
# with the extras named in BT_EXTRAS.
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${BT_EXTRAS}]"
