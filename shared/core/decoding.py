"""The bounds of image decoding, the same in every service (``BT_DECODE_*``, read once per process): the largest
image accepted, the sizes above which an image is decoded smaller, and the slots that bound decodes at once.

Both decoders read them: ``imaging`` (every image format) and ``dicom`` (DICOM's display pipeline).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kit.deadline import current_budget
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.workers import usable_cpus

# Every slice of the training data is 224x224 (0.05 Mpx) and clinical MRI matrices are at most 1024x1024 (1 Mpx);
# 4096x4096 (16.8 Mpx) still takes a photographed film or a 4K screenshot, and its full-size RGBA is 64 MiB.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Images whose longer side is at most this are decoded at full size, pixel for pixel as before.
FULL_DECODE_MAX_SIDE = 2048
# Larger ones are scaled down by a whole factor that keeps the longer side at least this (well above any
# contract size, 224 at most, and the explainer's overlay).
REDUCED_MIN_SIDE = 1024
# After decoding an image larger than this, freed memory is handed back to the system (give_memory_back).
TRIM_AFTER_PIXELS = FULL_DECODE_MAX_SIDE * FULL_DECODE_MAX_SIDE
# What a client is told to wait after SERVER_BUSY: a decode takes well under a second.
BUSY_RETRY_AFTER_S = 1


class DecodeSettings(BaseSettings):
    """Bounds of image decoding, the same in every service (``BT_DECODE_*``); bad values stop a service."""

    model_config = SettingsConfigDict(env_prefix="BT_DECODE_", extra="ignore")

    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Largest image accepted (width x height); larger is 415 INVALID_IMAGE."
    )
    max_concurrent: int = Field(0, ge=0, description="Decodes at once in a process; 0: one per usable CPU.")
    wait_s: float = Field(2.0, ge=0, description="Longest wait for a decode slot before 503 SERVER_BUSY.")

    def slots(self) -> int:
        return self.max_concurrent or usable_cpus()


@functools.cache
def decode_settings() -> DecodeSettings:
    """The process's decode bounds, read from the environment once."""
    return DecodeSettings()


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def give_memory_back() -> None:
    """Return freed heap pages to the system (glibc's ``malloc_trim``).

    A large image's decode allocates tens of MB in the decoding thread's malloc arena; once freed, glibc keeps
    those pages for later use, so a burst of large images left inference ~300 MB above its idle size for good
    (docs/reliability.md). Trimming after each large decode gives them back; it costs about a millisecond.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _decode_slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(decode_settings().slots())


@contextlib.contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the process's decode slots; SERVER_BUSY when none frees up within ``wait_s``, or in time for
    the request's budget (``shared.kit.deadline``: a decode is not started for a client that has gone or could no
    longer be answered before its caller gives up).

    Decoding runs in worker threads (never on the event loop), so a blocking wait is fine here.
    """
    slots = _decode_slots()
    budget = current_budget()
    wait_s = decode_settings().wait_s if budget is None else budget.wait_s(decode_settings().wait_s)
    if not slots.acquire(timeout=wait_s):
        raise ServiceError(
            ErrorCode.SERVER_BUSY,
            f"Too many images are being decoded at once (at most {decode_settings().slots()}); try again shortly.",
            retry_after_s=BUSY_RETRY_AFTER_S,
        )
    try:
        if budget is not None:
            budget.check()
        yield
    finally:
        slots.release()
