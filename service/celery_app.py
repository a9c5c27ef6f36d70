"""The Celery app: Redis broker, the job store as the only result store, at-least-once delivery of every task.

Tasks run at least once (acks_late + reject_on_worker_lost; a lost worker's message comes back after the
visibility timeout), so every task is idempotent: it checks the job store before doing anything.
Worker: `celery -A service.celery_app worker -Q cpu,webhooks` (GPU hosts: `-Q gpu --concurrency 1`).
"""

from __future__ import annotations

from celery import Celery

from engines.settings import Settings
from service.webhooks import DELIVER_EVENT

RUN_JOB = "tome.run_job"


def create_celery(settings: Settings) -> Celery:
    app = Celery("tome", broker=settings.redis_url, include=["service.tasks"])
    app.conf.update(
        task_ignore_result=True,  # results live in the job store
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A pool process that preloads the model reports alive only once it is loaded (Celery's default: 4 s).
        worker_proc_alive_timeout=600 if settings.preload_engine else 4.0,
        task_time_limit=settings.job_time_limit,
        task_soft_time_limit=settings.job_time_limit * 0.95,
        task_default_queue=settings.job_queue,
        task_routes={DELIVER_EVENT: {"queue": settings.webhook_queue}},
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": settings.broker_restore_interval,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


# The worker process (and a process that submits jobs) builds its settings once, here: Celery needs a module-level app.
worker_settings = Settings()
app = create_celery(worker_settings)
