"""Several files with one model: reading them within bounds, and passing them to the inference service in as
few calls as its upload limit allows (usually one), each file answering or failing on its own."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, File, UploadFile

from services.gateway.deps import SettingsDep
from services.gateway.upstream import InferenceClient
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import PREDICT_BATCH_MAX_FILES, BatchItem, BatchPredictionOut, ItemError
from shared.kit.uploads import read_uploads

# The batch route's path ends so: its body holds several files, so the one-file upload limit exempts it.
BATCH_PATH_SUFFIX = "/predict/batch"


async def read_batch_files(
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="The images, one multipart `files` part each.")],
) -> list[bytes | ServiceError]:
    """Each file's bytes, or its own FILE_TOO_LARGE; more files than ``max_batch_files`` is a 422."""
    return await read_uploads(files, settings.max_batch_files, settings.max_upload_bytes)


BatchFiles = Annotated[list[bytes | ServiceError], Depends(read_batch_files)]


def plan_calls(sizes: list[int], max_bytes: int, max_files: int = PREDICT_BATCH_MAX_FILES) -> list[list[int]]:
    """Positions of files, in order, in groups of at most ``max_files`` whose sizes add up to at most
    ``max_bytes`` (a larger file goes alone): each group is one call, within the inference service's limits."""
    groups: list[list[int]] = []
    total = 0
    for position, size in enumerate(sizes):
        if not groups or len(groups[-1]) >= max_files or total + size > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(position)
        total += size
    return groups


async def predict_files(
    inference: InferenceClient,
    model: str,
    version: str | None,
    files: list[bytes | ServiceError],
    max_call_bytes: int,
    request_id: str | None = None,
    frame: int | None = None,
) -> BatchPredictionOut:
    """One answer per file, in order; the files already refused keep their error and are not sent. ``frame``
    (one frame of a multi-frame DICOM file) applies to every file."""
    items = {
        index: BatchItem(index=index, ok=False, error=ItemError.from_error(data))
        for index, data in enumerate(files)
        if isinstance(data, ServiceError)
    }
    sendable = [(index, data) for index, data in enumerate(files) if not isinstance(data, ServiceError)]
    groups = [[sendable[at] for at in group] for group in plan_calls([len(d) for _, d in sendable], max_call_bytes)]
    answers = await asyncio.gather(
        *(inference.predict_batch(model, version, [data for _, data in group], request_id, frame) for group in groups)
    )
    for group, answer in zip(groups, answers, strict=True):
        if len(answer.results) != len(group):
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR,
                f"The inference service answered {len(answer.results)} results for {len(group)} files.",
            )
        for (index, _), item in zip(group, answer.results, strict=True):
            items[index] = item.model_copy(update={"index": index})
    return BatchPredictionOut(results=[items[index] for index in range(len(files))])
