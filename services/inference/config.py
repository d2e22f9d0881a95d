"""Settings of the inference service, read from ``BT_INFERENCE_*`` variables (and ``MLFLOW_TRACKING_URI``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.core.masking import MAX_REGIONS
from shared.kit.audit.settings import AuditSettings
from shared.kit.auth import CallerTokenSettings
from shared.kit.hosts import HostSettings
from shared.kit.service import DEFAULT_MAX_UPLOAD_BYTES
from shared.kit.uploads import MULTIPART_OVERHEAD_BYTES
from shared.kit.workers import WorkerSettings, usable_cpus

# Largest `regions` part of a predict-masked request: a label map of at most 1024 x 1024 at 16 bits is 2 MiB raw,
# and PNG's framing adds little to that.
MAX_REGIONS_PNG_BYTES = 4 * 1024 * 1024


class Settings(HostSettings, WorkerSettings, CallerTokenSettings, AuditSettings, BaseSettings):
    """Everything the inference service can be told; bad values stop it at start-up."""

    model_config = SettingsConfigDict(env_prefix="BT_INFERENCE_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    tracking_uri: str = Field(
        "http://127.0.0.1:5000",
        validation_alias=AliasChoices("BT_INFERENCE_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking server that also holds the model registry.",
    )
    cache_dir: Path = Field(
        Path("var/inference/models"),
        description="Where downloaded ONNX files are kept, one folder per version.",
    )
    cache_key_file: Path | None = Field(
        None,
        description="A secret file (at least 16 bytes, outside cache_dir) whose key signs the cache's records: the "
        "kept catalogue and each file's verified sha256. Unset: a key derived from MLFLOW_TRACKING_PASSWORD, else one "
        "of this process only (docs/reliability.md).",
    )
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, gt=0, description="Largest accepted image file.")
    max_pixel_batch_images: int = Field(
        2048, ge=1, description="Most images in one predict-pixels request (the explainer's perturbed batches)."
    )
    max_pixel_batch_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest predict-pixels body (N x H x W bytes of uint8 pixels)."
    )
    max_json_rows: int = Field(
        8,
        ge=1,
        le=1024,
        description="Rows of the model's FP32 tensor an Open Inference Protocol JSON body may carry: its byte limit is "
        "this many rows of the largest input a loaded model takes, at 24 bytes a number, plus 1 MiB (e.g. base64 image "
        "files). Larger batches go as binary data (tritonclient's default). Bounds what parsing a body costs.",
    )
    max_masked_copies: int = Field(
        4096,
        ge=1,
        le=65536,
        description="Most copies (rows of `keep`) in one predict-masked request: an explanation's perturbed copies "
        "of one upload. Its body may hold one upload, a label map PNG and this many rows of up to 1024 regions.",
    )
    pixel_run_batch: int = Field(
        64,
        ge=1,
        description="Images per onnxruntime run within a predict-pixels or predict-masked request; bounds the memory.",
    )
    batching: bool = Field(
        True,
        description="Coalesce concurrent predictions for one model version into one onnxruntime run: each worker "
        "runs a model's batches back to back, and the requests that arrived during a run go together in the next "
        "(with one worker per core, as many runs side by side as cores; docs/benchmarks.md).",
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Longest a request waits, counted from its arrival, for others to join its batch; requests that "
        "queued during the previous run go at once. 0: a request to an idle model runs at once (a lone request "
        "pays nothing for batching; measured best at every concurrency).",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Most images in one batched onnxruntime run.")
    max_queue: int = Field(
        512,
        ge=1,
        description="Most images waiting for one model version's batches; beyond it requests get 503 MODEL_NOT_READY.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime intra-op threads per session; 0 sizes them against the runs that go in parallel: "
        "with batching one run per model at a time, so the worker's share of the CPUs; without it one run per request, "
        "so 1 each.",
    )
    concurrent_work: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads of one worker decoding, judging and running models at once; requests beyond them wait "
        "their turn on the event loop. 0: twice the worker's share of the CPUs.",
    )
    catalog_ttl_s: float = Field(
        5.0,
        ge=0,
        description="Seconds the list of versions and aliases is reused before asking MLflow again.",
    )
    mlflow_timeout_s: float = Field(10.0, gt=0, description="Timeout of one request to MLflow.")
    registry_retry_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="After MLflow failed, the least seconds between two tries (one background probe); "
        "meanwhile requests are served from the last catalogue and the verified cache without calling it.",
    )
    mlflow_max_retries: int = Field(
        0, ge=0, le=10, description="Retries of a failed MLflow request; MLflow's own default waits minutes."
    )
    preload: bool = Field(True, description="Load the default version of every model in the background at start.")
    metric_prefixes: tuple[str, ...] = Field(
        (
            "test_accuracy",
            "test_images",
            "test_set_",
            "train_images",
            "test_f1_macro",
            "test_precision_macro",
            "test_recall_macro",
            "test_roc_auc",
            "cv_mean_val_accuracy",
            "onnx_ms_per_image",
            "onnx_bytes",
        ),
        description="Only run metrics starting with one of these are listed as headline metrics; empty: all.",
    )
    ood_mode: Literal["refuse", "flag", "off"] = Field(
        "refuse",
        description="The guard against non-MRI input (docs/ood-guard.md): refuse answers 422 NOT_A_BRAIN_MRI above "
        "its threshold, flag answers with ood.flag true, off skips it. Without a registered guard nothing is refused.",
    )
    referral_alpha: float = Field(
        0.05,
        ge=0.01,
        le=0.3,
        description="Miscoverage of the prediction sets every answer carries (docs/referral.md): a set holds the true "
        "class with probability at least 1 - alpha; an answer whose set is not exactly one class is referred.",
    )
    ood_refresh_s: float = Field(30.0, ge=0, description="Seconds between looks for a new champion of the guard.")
    debug_endpoints: bool = Field(
        False, description="Expose /debug/modules (loaded top-level modules); for tests, never in production."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("MLFLOW_TRACKING_URI must name the MLflow server, e.g. http://127.0.0.1:5000")
        return value.rstrip("/")

    def masked_body_bytes(self) -> int:
        """The largest predict-masked body: one upload, the regions PNG, ``max_masked_copies`` keep rows of the most
        regions, and the multipart framing."""
        keep = self.max_masked_copies * MAX_REGIONS
        return self.max_upload_bytes + MAX_REGIONS_PNG_BYTES + keep + MULTIPART_OVERHEAD_BYTES

    def work_threads(self) -> int:
        """Threads doing blocking work at once in this worker (see ``concurrent_work``)."""
        return self.concurrent_work or 2 * max(1, usable_cpus() // (self.workers or 1))

    def session_threads(self) -> int:
        """Intra-op threads each onnxruntime session gets (see ``intra_op_threads``): with batching the CPUs
        of this worker's share (``workers`` is the count its supervisor started; 0: a lone process)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, usable_cpus() // (self.workers or 1)) if self.batching else 1
