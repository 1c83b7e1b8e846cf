"""Producer SDK: enqueue frames, get results. Never imports ``workers``."""

from framepool.errors import (
    BadFrame,
    BadInput,
    BrokerUnavailable,
    QueueFull,
    ResultTimeout,
    UnknownModel,
)
from framepool.schemas import InferenceResult
from producer.client import FrameProducer
from producer.frame_handle import FrameHandle

__all__ = [
    "BadFrame",
    "BadInput",
    "BrokerUnavailable",
    "FrameHandle",
    "FrameProducer",
    "InferenceResult",
    "QueueFull",
    "ResultTimeout",
    "UnknownModel",
]
