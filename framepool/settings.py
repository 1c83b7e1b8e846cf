"""One Settings object for every framepool process.

Names follow the first reference document (``SERVER_HOST``, ``LOG_FORMAT``,
``ENABLE_GPU`` ...) plus framepool's own (``REDIS_URL``, ``MAX_BATCH_SIZE`` ...).
Values come from the environment and ``.env``; nothing else in framepool reads
the environment.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The zoo ships beside the core package (``models/zoo``) in a checkout and in an
# installed wheel alike; computing the path does not import ``models``.
DEFAULT_MODELS_ROOT = Path(__file__).resolve().parent.parent / "models" / "zoo"


class LivePolicy(BaseModel):
    """How a model treats live frames (defaults for every submit to it).

    ``deadline_ms``: a frame not started within this many ms of its enqueue is
    answered ``expired``. ``latest_wins``: when a newer frame of the same camera
    is queued, an older one not yet run is dropped as ``superseded``.
    """

    model_config = ConfigDict(extra="forbid")

    deadline_ms: float | None = Field(None, gt=0)
    latest_wins: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- server (reference names) ---
    server_host: str = "127.0.0.1"
    server_port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- runtime ---
    runtime_id: str = Field(default_factory=lambda: f"framepool-{uuid.uuid4().hex[:8]}")
    models_root: Path = DEFAULT_MODELS_ROOT
    max_concurrent_inferences: int = Field(10, ge=1)

    # --- GPU ---
    enable_gpu: bool = True
    gpu_memory_reserve_mb: float = Field(512.0, ge=0)
    gpu_fallback_to_cpu: bool = True
    # CUDA MPS for workers that share a GPU (`framepool up`, `bench gpu`): auto starts
    # its own daemon when a GPU has two or more workers; on requires it; off
    cuda_mps: Literal["auto", "on", "off"] = "auto"
    # torch's OpenMP threads between parallel regions: "passive" sleeps at once,
    # "spin" stays awake ~0.3 ms (GOMP_SPINCOUNT), "auto" spins when a served
    # model's manifest says cpu_wait = "spin". OMP_WAIT_POLICY, GOMP_SPINCOUNT or
    # KMP_BLOCKTIME set in the environment win over this.
    cpu_wait_policy: Literal["auto", "passive", "spin"] = "auto"
    # JPEG frames for a model on a GPU that can decode them (torchvision's nvJPEG; the
    # zoo's ResNets) are decoded, resized and normalised there, a batch at a time: the
    # task thread only checks the header. False: decoded on the CPU, frame by frame.
    gpu_jpeg_decode: bool = True

    # --- metrics / observability ---
    metrics_enabled: bool = True
    metrics_update_interval_seconds: float = Field(15.0, gt=0)
    request_id_header: str = "X-Request-ID"
    redact_log_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["frame_base64", "password", "token", "api_key", "frame"]
    )

    # --- models ---
    model_warmup_enabled: bool = True
    model_load_timeout_ms: int = Field(60000, ge=1)
    # error rate over the last MODEL_HEALTH_WINDOW frames that makes a model
    # degraded / unhealthy (it goes back to ready when the rate falls again)
    model_health_window: int = Field(50, ge=1)
    model_degraded_error_rate: float = Field(0.1, gt=0, le=1)
    model_unhealthy_error_rate: float = Field(0.5, gt=0, le=1)
    # every N batches one runs under torch.profiler (0 = off)
    profile_every_n_batches: int = Field(0, ge=0)

    # --- framepool: Redis, queues, batching ---
    redis_url: str = "redis://127.0.0.1:6379/0"
    # the embedded redis-server's io-threads (`framepool up`, the benches): 1 = its
    # main thread does all socket I/O; more help a big host with few busy processes
    redis_io_threads: int = Field(1, ge=1, le=16)
    data_dir: Path = Path(".framepool")
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_timeout_ms: float = Field(5.0, ge=0)
    max_queue_depth: int = Field(10000, ge=1)
    queue_full_policy: Literal["reject", "drop"] = "reject"
    frame_max_age_ms: int = Field(10000, ge=1)
    # per-model live-frame policies, JSON: {"shape_detector": {"latest_wins": true,
    # "deadline_ms": 500}}; a submit's own deadline_ms / latest_wins override them
    live_policies: dict[str, LivePolicy] = Field(default_factory=dict)
    result_ttl_seconds: int = Field(3600, ge=1)
    # claim check: the producer stores a frame's bytes under their own key and its
    # Celery message carries only the metadata (a small message for the worker's
    # consumer to decode, copy and ack); the key lives until the frame's result is
    # written, at most FRAME_TTL_SECONDS (a frame queued longer is answered error)
    frame_claim_check: bool = True
    frame_ttl_seconds: int = Field(86400, ge=60)
    result_stream_maxlen: int = Field(10000, ge=1)
    visibility_timeout_seconds: int = Field(3600, ge=1)
    # a redelivered frame runs alone; one started alone this many times (it kills
    # its worker every time) is dead-lettered instead of run again
    max_frame_attempts: int = Field(3, ge=1)
    worker_concurrency: int | None = Field(None, ge=1)

    # --- scale-out: supervisor (`framepool up`), drain, scaling advice ---
    # on SIGTERM/SIGINT a worker hands back the frames it has not started and finishes
    # its running batches within this; then it hands back what is left and exits
    shutdown_grace_seconds: float = Field(20.0, gt=0)
    # a worker that exits more than WORKER_MAX_RESTARTS times within
    # WORKER_RESTART_WINDOW_SECONDS is given up on (`framepool up` stops, exit 6);
    # restarts wait WORKER_RESTART_BACKOFF_SECONDS, doubled each time, at most 30 s
    worker_max_restarts: int = Field(5, ge=0)
    worker_restart_window_seconds: float = Field(60.0, gt=0)
    worker_restart_backoff_seconds: float = Field(1.0, gt=0)
    # GET /api/v1/scaling (docs/scaling.md): rates over this window, workers kept this busy,
    # and a backlog whose oldest frame is older than the target drained within DRAIN
    scaling_window_seconds: float = Field(30.0, gt=0)
    scaling_target_utilization: float = Field(0.8, gt=0, le=1)
    scaling_target_queue_age_seconds: float = Field(2.0, gt=0)
    scaling_drain_seconds: float = Field(30.0, gt=0)

    # --- frames ---
    max_frame_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_frame_pixels: int = Field(40_000_000, ge=1)
    jpeg_quality: int = Field(90, ge=1, le=100)

    # --- services ---
    monitor_port: int = Field(8080, ge=1, le=65535)
    flower_port: int = Field(5555, ge=1, le=65535)
    api_token: str | None = None
    flower_basic_auth: str | None = None
    # Flower's own option names: tasks kept in memory, seconds before an offline worker goes
    flower_max_tasks: int = Field(10000, ge=100)
    flower_purge_offline_workers: int = Field(600, ge=1)
    heartbeat_interval_seconds: float = Field(5.0, gt=0)

    # --- webhooks (result callbacks) and dead letters ---
    # HMAC key of X-Framepool-Signature; empty: unsigned (`framepool up` generates one)
    callback_secret: SecretStr = SecretStr("")
    callback_max_retries: int = Field(5, ge=0)  # retries after the first attempt
    callback_backoff_seconds: float = Field(1.0, gt=0)  # base of the exponential backoff
    callback_timeout_seconds: float = Field(5.0, gt=0)  # per HTTP attempt
    dead_letter_maxlen: int = Field(10000, ge=1)

    # --- monitor: API, stream, alerts ---
    metrics_require_token: bool = False
    rate_limit_per_second: float = Field(10.0, gt=0)  # per client, the reference's 10/s
    rate_limit_burst: int = Field(50, ge=1)
    ws_max_connections: int = Field(100, ge=1)
    ws_max_message_bytes: int = Field(4096, ge=64)  # what a client may send (filters)
    ws_send_timeout_seconds: float = Field(2.0, gt=0)  # a slower client is dropped
    monitor_poll_interval_seconds: float = Field(1.0, gt=0)
    # while nobody looks (no WebSocket client, no API or /metrics request in the last
    # two polls) the monitor reads Redis this often instead (workers write every 5 s)
    monitor_idle_poll_interval_seconds: float = Field(5.0, gt=0)
    alert_webhook_url: str | None = None
    alert_gpu_utilization_percent: float = Field(90.0, gt=0, le=100)
    alert_gpu_utilization_for_seconds: float = Field(30.0, ge=0)
    alert_gpu_memory_percent: float = Field(95.0, gt=0, le=100)
    alert_gpu_temperature_celsius: float = Field(85.0, gt=0)
    alert_queue_growth_for_seconds: float = Field(60.0, ge=0)
    alert_history_size: int = Field(1000, ge=10)

    @field_validator("redact_log_fields", mode="before")
    @classmethod
    def _split_fields(cls, v: object) -> object:
        if isinstance(v, str):
            return [f.strip() for f in v.split(",") if f.strip()]
        return v

    @field_validator("log_format", mode="before")
    @classmethod
    def _text_is_console(cls, v: object) -> object:
        # The reference document calls the human format "text".
        return "console" if isinstance(v, str) and v.lower() == "text" else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @property
    def batch_timeout_s(self) -> float:
        return self.batch_timeout_ms / 1000.0


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built once (entry points call this)."""
    return Settings()
