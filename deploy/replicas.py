"""Inference replicas for `python -m deploy.stack up --replicas N`.

Replica 1 listens on the inference port (8001 by default), so one replica is the stack as it always was;
replicas 2..N on the inference port + 10, + 11, ... (8011, 8012, ...: clear of the other services' 8002-8003).
Each has its own model cache folder (``models``, ``models-2``, ...), so no two processes ever write one file.
The gateway gets every URL (``BT_GATEWAY_INFERENCE_URLS``) and spreads predictions over the ready ones; the
explainer keeps one inference URL, replica 1's. In ``stack.json`` they are ``inference``, ``inference-2``, ...,
so ``status`` and ``down`` see each one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from deploy.processes import ManagedProcess, loopback_url, start_service
from shared.kit.workers import usable_cpus

WORKERS_ENV = "BT_INFERENCE_WORKERS"

# Replicas 2..N start this far above the inference port.
EXTRA_REPLICA_PORT_OFFSET = 10
MAX_REPLICAS = 16


def replica_ports(inference_port: int, count: int) -> list[int]:
    """The port of each of ``count`` replicas, the first on ``inference_port``."""
    if not 1 <= count <= MAX_REPLICAS:
        raise ValueError(f"--replicas must be between 1 and {MAX_REPLICAS}, got {count}")
    return [inference_port] + [inference_port + EXTRA_REPLICA_PORT_OFFSET + n for n in range(count - 1)]


def replica_count(text: str) -> int:
    """``--replicas``'s type: a whole number from 1 to MAX_REPLICAS, else argparse's usage error."""
    try:
        count = int(text)
        replica_ports(1, count)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_REPLICAS}, got {text!r}") from exc
    return count


def replica_name(index: int) -> str:
    """``inference`` for the first replica (index 0), then ``inference-2``, ``inference-3``, ..."""
    return "inference" if index == 0 else f"inference-{index + 1}"


def replica_urls(inference_port: int, count: int) -> list[str]:
    return [loopback_url(port) for port in replica_ports(inference_port, count)]


def gateway_env(inference_port: int, count: int) -> dict[str, str]:
    """The gateway's list of replicas."""
    return {"BT_GATEWAY_INFERENCE_URLS": ",".join(replica_urls(inference_port, count))}


def start_replicas(
    env: dict[str, str],
    inference_port: int,
    count: int,
    state_dir: Path,
    started: Callable[[ManagedProcess], None],
) -> None:
    """Start the replicas one after the other (each is healthy before the next starts: two processes loading
    models at once on 2 cores only slow each other); ``started`` is told of each as soon as it is up."""
    logs = state_dir / "logs"
    for index, port in enumerate(replica_ports(inference_port, count)):
        name = replica_name(index)
        cache = state_dir / ("models" if index == 0 else f"models-{index + 1}")
        replica_env = {**env, "BT_INFERENCE_CACHE_DIR": str(cache)}
        # `python -m services.inference`, so its worker processes run: the cores shared among the replicas.
        replica_env.setdefault(WORKERS_ENV, str(max(1, usable_cpus() // count)))
        process = start_service("inference", port, replica_env, logs / f"{name}.log", as_module=True)
        process.name = name
        started(process)
