"""benchmarks.explain_quality's command line: models named with versions, and a SIGTERM that still cleans up."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.explain_quality import parse_models

ROOT = Path(__file__).resolve().parents[2]


def test_models_are_named_with_their_versions() -> None:
    assert parse_models("cnn=1, mobilenetv2=2,ensemble=2") == {"cnn": "1", "mobilenetv2": "2", "ensemble": "2"}
    with pytest.raises(argparse.ArgumentTypeError, match="model=version"):
        parse_models("cnn")


def test_sigterm_runs_the_cleanup_of_what_was_started() -> None:
    code = (
        "import os, signal, time\n"
        "from benchmarks.explain_quality import stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(10)\n"
        "finally:\n"
        "    print('stopped the services', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "stopped the services"
    assert result.returncode == 128 + 15
