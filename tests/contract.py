"""Names the contract fixes that several tests check."""

from __future__ import annotations

#: The first reference document's fifteen metrics (exposition names).
REFERENCE_METRICS = (
    "inference_requests_total",
    "inference_duration_seconds",
    "inference_queue_size",
    "concurrent_requests_active",
    "model_load_status",
    "model_health_status",
    "model_inference_count",
    "model_error_count",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_memory_reserved_bytes",
    "gpu_utilization_percent",
    "gpu_temperature_celsius",
    "frame_decode_duration_seconds",
    "frame_size_bytes",
)
