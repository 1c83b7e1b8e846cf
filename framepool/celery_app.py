"""The Celery app shared by producers, workers and Flower."""

from __future__ import annotations

from celery import Celery

from celeryconfig import celery_config
from framepool.settings import Settings


def create_app(settings: Settings) -> Celery:
    app = Celery("framepool", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
