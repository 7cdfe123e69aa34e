"""The Celery app, configured alike by the API nodes (which publish runs) and the workers
(which run them): JSON only, late acknowledgement, one run per process at a time, and the
broker's visibility timeout from `[workers] visibility_timeout_s` (`tasks` says why)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend

TASK = "songscan.scan_run"
QUEUE = "songscan.scans"


class PolledRedisBackend(RedisBackend):
    """Celery's Redis result backend, its results read by polling their keys
    (`AsyncResult.ready`) instead of a subscription made when a run is sent: a subscription
    whose connection fails gives up for good ("the Celery application must be restarted"),
    which would leave an API node unable to scan after the broker's first outage; the
    dispatcher takes a scan's results one at a time anyway."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass


def celery_app(broker_url: str, visibility_timeout_s: float) -> Celery:
    """The Celery app of a broker, as the API nodes and the workers both configure it."""
    backend = f"{__name__}.{PolledRedisBackend.__name__}+{broker_url}"
    app = Celery("songscan", broker=broker_url, backend=backend, set_as_current=False)
    # How often a worker looks for runs whose worker died (those unacknowledged for longer
    # than the visibility timeout): a few times per timeout, at most every 10 s.
    restore_every_s = max(1, min(10, int(visibility_timeout_s / 4)))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": restore_every_s,
            "unacked_restore_throttle": 1,
        },
        result_expires=max(3600, int(visibility_timeout_s * 2)),
        # A broker that is down: a publish fails in seconds, not after minutes of retries.
        broker_connection_timeout=5,
        redis_socket_connect_timeout=5,
        redis_socket_timeout=30,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
    )
    return app


def broker_address(broker_url: str) -> str:
    """HOST:PORT/N of a broker URL, without the password it may hold."""
    return broker_url.partition("://")[2].rpartition("@")[2]
