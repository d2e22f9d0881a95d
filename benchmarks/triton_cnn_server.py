"""Serve one ONNX classifier through NVIDIA Triton with PyTriton, for the serving benchmark.

Runs inside PyTriton's own virtual environment (see benchmarks/serving_triton.py), so it imports nothing from
this project: only numpy, onnxruntime and pytriton. PyTriton starts the bundled `tritonserver` binary as a
child process; Triton's Python backend hands each (dynamically batched) request to `infer` in this process,
which runs the ONNX file with onnxruntime on the CPU. Triton answers KServe V2 (`/v2/models/NAME/infer`) on the
given loopback ports; SIGTERM or SIGINT stops Triton and this process.

    python triton_cnn_server.py --onnx cnn.onnx --input-name input --input-shape 96,96,1 \
        --http-port 8000 --grpc-port 8001 --metrics-port 8002 --workspace DIR
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

LOOPBACK = "127.0.0.1"


def open_session(onnx_file: str, threads: int) -> ort.InferenceSession:
    """The same session options as the project's inference service: no spinning idle threads, one inter-op."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_file, sess_options=options, providers=["CPUExecutionProvider"])


def output_tensors(session: ort.InferenceSession) -> list[Tensor]:
    """One FP32 Triton output per ONNX output, batch axis left out (Triton adds it); unknown axes are -1."""
    return [
        Tensor(name=out.name, dtype=np.float32, shape=tuple(d if isinstance(d, int) else -1 for d in out.shape[1:]))
        for out in session.get_outputs()
    ]


def make_infer(session: ort.InferenceSession, input_name: str) -> Callable[..., dict[str, np.ndarray]]:
    """The bound function: one onnxruntime run per batch Triton's dynamic batcher assembled."""
    output_names = [out.name for out in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        tensor = np.ascontiguousarray(inputs[input_name], dtype=np.float32)
        results = session.run(output_names, {input_name: tensor})
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(output_names, results, strict=True)}

    return infer


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as SIGINT: `Triton.serve` then stops tritonserver and empties the workspace before returning."""
    raise KeyboardInterrupt


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--model-name", default="cnn")
    parser.add_argument("--input-name", required=True)
    parser.add_argument("--input-shape", required=True, help="one image's shape, without the batch axis: 96,96,1")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workspace", required=True, help="PyTriton's model store and sockets (emptied on stop)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads; 0: every CPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    threads = args.threads or len(os.sched_getaffinity(0))
    session = open_session(args.onnx, threads)
    shape = tuple(int(part) for part in args.input_shape.split(","))
    config = TritonConfig(
        http_address=LOOPBACK, http_port=args.http_port,
        grpc_address=LOOPBACK, grpc_port=args.grpc_port,
        metrics_address=LOOPBACK, metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
    )  # fmt: skip
    with Triton(config=config, workspace=pathlib.Path(args.workspace)) as triton:
        triton.bind(
            model_name=args.model_name,
            infer_func=make_infer(session, args.input_name),
            inputs=[Tensor(name=args.input_name, dtype=np.float32, shape=shape)],
            outputs=output_tensors(session),
            config=ModelConfig(max_batch_size=args.max_batch_size),  # PyTriton's default dynamic batcher
            strict=True,
        )
        print(f"serving {args.onnx} as {args.model_name} on http://{LOOPBACK}:{args.http_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
