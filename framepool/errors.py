"""framepool's error tree, shaped by who must react.

- ``BadInput``: the caller sent something wrong; fix the input, do not retry.
- ``Retryable``: a passing condition (queue full, Redis away); retry later.
- ``ModelError``: the model failed on good input.
- ``GpuOutOfMemory``: a ``ModelError`` the runtime handles by splitting batches.
- ``ModelRefused``: the worker cannot place a model (no GPU fits it and CPU
  fallback is off); it serves its other models.
- ``DeviceLost``: a sticky CUDA error; the worker process must exit so its
  frames are redelivered to a healthy one.
"""

from __future__ import annotations


class FramepoolError(Exception):
    """Root of every error framepool raises on purpose."""


class BadInput(FramepoolError, ValueError):
    """The input is wrong and will stay wrong: refuse it with a clear message."""


class BadFrame(BadInput):
    """A frame that is not a JPEG/PNG or HxWx3 uint8 array, or exceeds limits."""


class UnknownModel(BadInput, LookupError):
    """No model with that id exists under MODELS_ROOT or on any worker."""

    def __init__(self, model_id: str, known: list[str] | None = None) -> None:
        self.model_id = model_id
        self.known = sorted(known or [])
        hint = f"; known models: {', '.join(self.known)}" if self.known else ""
        super().__init__(f"unknown model {model_id!r}{hint}")


class ManifestError(BadInput):
    """A model.toml is missing fields, or its weights do not match their sha256."""


class Retryable(FramepoolError):
    """A passing condition; the same call may succeed later."""


class QueueFull(Retryable):
    """The model's queue holds MAX_QUEUE_DEPTH frames already."""

    def __init__(self, model_id: str, depth: int, limit: int) -> None:
        self.model_id, self.depth, self.limit = model_id, depth, limit
        super().__init__(f"queue for {model_id!r} is full ({depth} >= MAX_QUEUE_DEPTH={limit})")


#: What to do when Redis refuses REDIS_URL's password (the embedded one's is generated).
PASSWORD_HINT = "set REDIS_URL=redis://:PASSWORD@host:port/0 (`framepool up` prints it)"


class BrokerUnavailable(Retryable):
    """Redis cannot be reached (or refuses REDIS_URL's password)."""

    @classmethod
    def from_redis(cls, exc: BaseException, doing: str = "") -> BrokerUnavailable:
        """The error for a Redis client's ``exc``; a refused password says what to set."""
        from redis.exceptions import AuthenticationError

        prefix = f"{doing}: " if doing else ""
        chain: BaseException | None = exc  # kombu wraps the client's error in its own
        seen = 0
        while chain is not None and not isinstance(chain, AuthenticationError) and seen < 5:
            chain, seen = chain.__cause__ or chain.__context__, seen + 1
        if isinstance(chain, AuthenticationError):
            return cls(f"{prefix}Redis refuses REDIS_URL's password ({exc}): {PASSWORD_HINT}")
        return cls(f"{prefix}Redis unreachable: {exc}")


class ResultTimeout(Retryable, TimeoutError):
    """No result arrived within the timeout."""


class WorkerStopping(Retryable):
    """The worker is draining (SIGTERM): the frame goes back to its queue for another."""


class FrameMissing(BadFrame):
    """A claim-checked frame's bytes are no longer in Redis (older than FRAME_TTL_SECONDS,
    or deleted): the frame is answered ``error``, not run."""


class ResultNotStored(Retryable):
    """The worker could not write a frame's result to Redis: the message goes back to its
    queue (not acked), so the frame is answered once Redis is back."""


class ModelError(FramepoolError):
    """The model raised on input that was valid."""


class GpuOutOfMemory(ModelError):
    """CUDA ran out of memory for this batch."""


class ModelRefused(ModelError):
    """The model fits on no GPU and GPU_FALLBACK_TO_CPU is off."""


class DeviceLost(ModelError):
    """A sticky CUDA error (illegal access, lost device): the process cannot go on."""
