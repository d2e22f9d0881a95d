"""NVIDIA Triton as a peer in the serving benchmark: the same CNN ONNX file behind PyTriton, on loopback.

PyTriton's wheel carries the `tritonserver` binary, its Python backend and the libraries they link (CUDA's
runtime included, which loads without a GPU); only the Python backend stub's `libpython3.X.so.1.0` comes from
outside: the interpreter's own shared build (pyenv's here, see ``libpython_dir``) or the system's (Debian's
`libpython3.11`), which must then be the very same Python release as the venv's. PyTriton pins its own versions, so it
lives in a virtual environment of its own, built with pip on first use under the benchmark's state folder (as
MLServer's is). benchmarks/triton_cnn_server.py runs in it: it binds an onnxruntime session (CPU, the project's
session options, intra-op threads = every CPU since Triton's dynamic batcher runs one batch at a time, as our
inference does with batching on) and Triton answers KServe V2 `/v2/models/cnn/infer`, HTTP, gRPC and metrics all
on 127.0.0.1, so the FP32 JSON body written for MLServer works unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.processes import ManagedProcess, free_port, loopback_url, start_process

# Verified together on Debian 12, CPython 3.11, x86_64, no GPU (the wheel is manylinux_2_35 and needs glibc 2.35+).
TRITON_PACKAGES = ["nvidia-pytriton==0.7.0", "onnxruntime==1.31.1", "numpy==1.26.4"]
SERVER_SCRIPT = Path(__file__).with_name("triton_cnn_server.py")
TRITON_MODEL = "cnn"
# Our inference service's default largest batch; PyTriton's own default is 4.
TRITON_MAX_BATCH = 32
TRITON_START_TIMEOUT_S = 240.0
# A Python error line in the log ("AttributeError: ..."): the last one is the cause, tracebacks repeat it above.
ERROR_LINE = re.compile(r"^\s*[\w.]+(?:Error|Exception): .+$", re.MULTILINE)


def triton_venv(venv: Path) -> Path:
    """The PyTriton virtual environment's interpreter, built with pip when missing.

    A RuntimeError names what failed (no wheel for this platform, pip's error), for the benchmark's note.
    """
    python = venv / "bin" / "python"
    if _has_pytriton(python):
        return python
    if sys.platform != "linux" or os.uname().machine not in {"x86_64", "aarch64"}:
        raise RuntimeError(f"nvidia-pytriton ships wheels for Linux x86_64/aarch64 only, not {sys.platform}")
    print(f"building PyTriton's own virtual environment in {venv} (pip, a minute or two) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", *TRITON_PACKAGES]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")] or [done.stderr.strip()]
        raise RuntimeError(f"pip install {' '.join(TRITON_PACKAGES)} failed: {errors[-1][-250:]}")
    return python


def _has_pytriton(python: Path) -> bool:
    if not python.exists():
        return False
    probe = [str(python), "-c", "import onnxruntime, pytriton.triton"]
    return subprocess.run(probe, capture_output=True, timeout=120).returncode == 0


def libpython_dir(python: Path) -> Path | None:
    """The folder of the shared libpython that ``python`` itself runs on, when it was built shared.

    Triton's Python backend stub is linked against `libpython3.X.so.1.0` and imports the standard library of the
    environment's interpreter. When the loader finds another build of the library (Debian's 3.11.2 in
    /usr/lib beside pyenv's 3.11.7) the two disagree and the model fails to load (`'_thread.RLock' object has
    no attribute '_recursion_count'` from multiprocessing), so this folder goes first on LD_LIBRARY_PATH.
    """
    query = "import sysconfig as s; print(s.get_config_var('LIBDIR') or ''); print(s.get_config_var('INSTSONAME'))"
    done = subprocess.run([str(python), "-c", query], capture_output=True, text=True, timeout=60, check=True)
    libdir, soname = (done.stdout.splitlines() + ["", ""])[:2]
    return Path(libdir) if libdir and soname and (Path(libdir) / soname).exists() else None


def triton_command(python: Path, onnx_file: Path, input_name: str, image_shape: tuple[int, ...],
                   ports: tuple[int, int, int], workspace: Path) -> list[str]:  # fmt: skip
    """The command line of benchmarks/triton_cnn_server.py for one model on the given (HTTP, gRPC, metrics) ports."""
    http_port, grpc_port, metrics_port = ports
    return [
        str(python), str(SERVER_SCRIPT), "--onnx", str(onnx_file.resolve()), "--model-name", TRITON_MODEL,
        "--input-name", input_name, "--input-shape", ",".join(str(size) for size in image_shape),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--workspace", str(workspace), "--max-batch-size", str(TRITON_MAX_BATCH),
    ]  # fmt: skip


def start_triton(
    state_dir: Path, onnx_file: Path, input_name: str, input_shape: tuple[int, ...], logs: Path
) -> ManagedProcess:
    """PyTriton serving ``onnx_file`` as `cnn` on free loopback ports, ready once `/v2/models/cnn/ready` answers 200.

    ``input_shape`` is the contract's, batch axis first (e.g. (1, 96, 96, 1)); Triton's model takes one image's
    shape and a batch axis of its own. The environment is built under ``state_dir`` / triton-venv when missing.
    """
    python = triton_venv(state_dir / "triton-venv")
    image_shape = tuple(input_shape[1:])
    ports = (free_port(), free_port(), free_port())
    workspace = state_dir / "triton-workspace"  # PyTriton creates it (and refuses an existing one), removes it on stop
    shutil.rmtree(workspace, ignore_errors=True)  # left behind by a run that was killed
    command = triton_command(python, onnx_file, input_name, image_shape, ports, workspace)
    # Only PyTriton's venv: our own environment's packages must not leak into it or into the backend stub.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"
    libdir = libpython_dir(python)
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libdir), env.get("LD_LIBRARY_PATH")]))
    log = logs / "triton.log"
    try:
        return start_process(
            "triton", command, env, log, loopback_url(ports[0]), f"/v2/models/{TRITON_MODEL}/ready",
            TRITON_START_TIMEOUT_S,
        )  # fmt: skip
    except RuntimeError as exc:  # the process exited: lead with its cause, the benchmark's note keeps 300 characters
        raise RuntimeError(f"Triton exited before ready: {_cause(str(exc))} (log: {log})") from exc


def _cause(log_tail: str) -> str:
    """The last Python error line of a failed start's log tail, or its last line."""
    found = ERROR_LINE.findall(log_tail)
    lines = log_tail.strip().splitlines()
    return (found[-1] if found else lines[-1] if lines else "no output").strip()[:200]
