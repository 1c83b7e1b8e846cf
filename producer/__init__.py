"""Producer SDK: enqueue frames, get results. Never imports ``workers``."""

from framepool.errors import BadFrame, QueueFull, ResultTimeout, UnknownModel
from framepool.schemas import InferenceResult
from producer.client import FrameProducer
from producer.frame_handle import FrameHandle

__all__ = [
    "BadFrame",
    "FrameHandle",
    "FrameProducer",
    "InferenceResult",
    "QueueFull",
    "ResultTimeout",
    "UnknownModel",
]
