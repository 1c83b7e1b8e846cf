"""Model interface, registry and zoo. Knows nothing of Celery."""

from models.base import Model
from models.registry import available, load_model

__all__ = ["Model", "available", "load_model"]
