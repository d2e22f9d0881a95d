"""This machine's training speed: `python -m benchmarks.training_speed [--images 512]`.

A full-data run's minutes say as much about the machine as about the code: the same quick run took 24.6 minutes
on 2026-11-26 and far longer on later, slower machines. This measures the cost of one training epoch of the small
CNN at its refit size (96 px, 48 filters; both architectures) on random images, in CPU-milliseconds per image
(``time.process_time``: what the process itself computed, whatever else runs beside it) and in wall-clock
milliseconds, so that a run's minutes can be set against the machine they ran on. Writes its section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime

import numpy as np

from benchmarks.markdown import command_line, write_section

ARCHITECTURES = ("batchnorm", "study")
IMAGE_SIZE = 96
BATCH = 32


def epoch_cost(architecture: str, images: int) -> tuple[float, float]:
    """(CPU-ms, wall-ms) per image of one training epoch of the CNN's refit recipe with this architecture."""
    import keras

    from services.training.families.cnn import SmallCnnFamily
    from shared.core.contract import PreprocessingContract

    family = SmallCnnFamily()
    params = {**family.default_params(), "architecture": architecture, "seed": 1}
    contract = PreprocessingContract(layout="nhwc", scaling="unit", image_size=IMAGE_SIZE)
    model = family.build(contract, params)
    model.compile(optimizer="adamw", loss="categorical_crossentropy")
    rng = np.random.default_rng(1)
    pixels = rng.random((images, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    targets = keras.utils.to_categorical(rng.integers(0, 4, images), 4)
    model.fit(pixels[: BATCH * 2], targets[: BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)  # graph built
    cpu, wall = time.process_time(), time.perf_counter()
    model.fit(pixels, targets, batch_size=BATCH, epochs=1, verbose=0)
    return (time.process_time() - cpu) * 1000 / images, (time.perf_counter() - wall) * 1000 / images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="random training images in the timed epoch")
    args = parser.parse_args(argv)
    from services.training.keras_runtime import tensorflow

    tensorflow()  # the training's own thread budget
    rows = [(architecture, *epoch_cost(architecture, args.images)) for architecture in ARCHITECTURES]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(f"| `{name}` | {cpu:.1f} | {wall:.1f} |" for name, cpu, wall in rows)
    body = f"""## Training speed of this machine (`{command_line("benchmarks.training_speed", argv)}`)

{when} on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()}), Python {platform.python_version()};
one run, machine possibly shared (CPU-ms count this process's own work; wall-ms show the sharing);
one epoch of the CNN at its refit size (96 px, 48 filters) on {args.images} random images, after a warm-up.

| architecture | CPU-ms per image | wall-ms per image |
|---|---:|---:|
{table}

On 2026-11-26, when the whole quick run took 24.6 minutes, the same `batchnorm` epoch cost 6.4-6.9 CPU-ms per
image (docs/benchmarks.md, CNN variants). A machine several times slower than that takes several times longer.
"""
    print(body)
    write_section("training-speed", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
