"""Peak memory of decoding large uploads: `python -m benchmarks.decode_memory [--state-dir DIR] [--json FILE]`.

Starts MLflow and a real inference process on 127.0.0.1, registers one tiny ONNX model (32 px, flat), and
for each case starts a fresh inference process, warms it with one small prediction, then sends the case's
image once and 16 times at once. Reports the process's resident memory before, its peak during (VmHWM) and
what it still holds after, in MB, and how the requests were answered. The cases are the issue's: a 190 KB PNG
declaring 7000x7000 RGBA, and a 4000x4000 RGBA PNG (under the default pixel limit, so it is decoded).
Everything it starts is stopped, even on failure. Takes about a minute.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from deploy.processes import ManagedProcess, free_port, start_mlflow, start_service
from shared.core.contract import METADATA_KEY, OUTPUT_NAME, PreprocessingContract
from shared.kit.schemas import registered_name

MODEL = "rf"
CONCURRENT = 16
CASES = {"7000x7000 RGBA PNG": 7000, "4000x4000 RGBA PNG": 4000}


def tiny_onnx(contract: PreprocessingContract) -> bytes:
    """A linear softmax classifier over flat unit pixels, with the contract embedded: enough to serve."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = contract.image_size**2
    weights = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.01, (features, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [contract.input_name, "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info(contract.input_name, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 4])],
        [weights],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def register_tiny_model(tracking_uri: str) -> None:
    import mlflow

    from services.training import registration, tracking
    from services.training.registration import LoggedFile

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("decode-memory")
    model_bytes = tiny_onnx(PreprocessingContract(layout="flat", scaling="unit", image_size=32))
    with mlflow.start_run():
        logged = tracking.log_onnx_model(model_bytes, name=MODEL)
        registration.register(
            registered_name(MODEL), LoggedFile.of_model(logged), model_bytes, description="decode benchmark", tags={}
        )


def large_png(side: int) -> bytes:
    """A mostly transparent RGBA image that compresses to a small file, as a hostile upload would."""
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    image.paste((200, 200, 200, 255), (side // 4, side // 4, side // 2, side // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            fields[key] = round(int(value.split()[0]) / 1024.0, 1)
    return fields


def predict(url: str, data: bytes) -> int:
    files = {"file": ("scan.png", data, "image/png")}
    try:
        return httpx.post(f"{url}/v1/models/{MODEL}/predict", files=files, timeout=120.0, trust_env=False).status_code
    except httpx.HTTPError:
        return -1


def measure_case(env: dict[str, str], logs: Path, data: bytes, count: int, warm: bytes) -> dict[str, Any]:
    server: ManagedProcess = start_service("inference", free_port(), env, logs / "inference.log")
    try:
        deadline = time.monotonic() + 60
        while predict(server.url, warm) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"inference never answered a small image:\n{server.log_tail()}")
            time.sleep(0.5)
        before = memory_mb(server.process.pid)
        with ThreadPoolExecutor(count) as pool:
            statuses = Counter(pool.map(lambda _: predict(server.url, data), range(count)))
        time.sleep(1.0)  # let freed memory go back before reading what is held
        after = memory_mb(server.process.pid)
        return {
            "requests": count,
            "rss_before_mb": before["VmRSS"],
            "peak_mb": after["VmHWM"],
            "held_after_mb": after["VmRSS"],
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
        }
    finally:
        server.stop()


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| image | at once | RSS before (MB) | peak RSS (MB) | held after (MB) | answers |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case, rows in results.items():
        for row in rows:
            answers = ", ".join(f"{n} x {status}" for status, n in row["statuses"].items())
            lines.append(
                f"| {case} | {row['requests']} | {row['rss_before_mb']} | {row['peak_mb']} | "
                f"{row['held_after_mb']} | {answers} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, help="where MLflow and the logs live (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state_dir or Path(tmp)
        logs = state / "logs"
        mlflow_server = start_mlflow(state / "mlflow", free_port(), logs / "mlflow.log")
        try:
            register_tiny_model(mlflow_server.url)
            env = {
                "MLFLOW_TRACKING_URI": mlflow_server.url,
                "BT_INFERENCE_TRACKING_URI": mlflow_server.url,
                "BT_INFERENCE_CACHE_DIR": str(state / "inference-cache"),
            }
            warm = large_png(64)
            results: dict[str, list[dict[str, Any]]] = {}
            for case, side in CASES.items():
                data = large_png(side)
                name = f"{case} ({len(data) // 1024} KB)"
                results[name] = [measure_case(env, logs, data, count, warm) for count in (1, CONCURRENT)]
        finally:
            mlflow_server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.stdout.write(table(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
