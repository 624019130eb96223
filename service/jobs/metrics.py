"""The queue's metrics, by task (bounded: the registered kinds). Counts come from the processes
that enqueue and run jobs; the queue's depth and oldest waiting job from the one worker holding
the sweeper's lock, so adding pods never adds the same queue twice."""

import time
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

JOB_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

JOBS_ENQUEUED = Counter("glasshouse_jobs_enqueued_total", "Jobs accepted onto the queue.", ["task"])
JOBS_STARTED = Counter("glasshouse_jobs_started_total", "Attempts a worker started.", ["task"])
JOBS_SUCCEEDED = Counter(
    "glasshouse_jobs_succeeded_total", "Jobs that finished successfully.", ["task"]
)
JOBS_FAILED = Counter(
    "glasshouse_jobs_failed_total",
    "Jobs that ended failed (attempts exhausted or unfixable).",
    ["task"],
)
JOBS_RETRIED = Counter(
    "glasshouse_jobs_retried_total", "Failed attempts queued again after a backoff.", ["task"]
)
JOB_DURATION = Histogram(
    "glasshouse_job_duration_seconds",
    "Time one attempt ran, by task and outcome (succeeded, retried, failed; released: handed "
    "back at shutdown; lost: taken over by another worker).",
    ["task", "outcome"],
    buckets=JOB_DURATION_BUCKETS,
)


JOB_OUTCOMES = ("succeeded", "retried", "failed", "released", "lost")


def declare_tasks(tasks: Iterable[str]) -> None:
    """Every task's series from the start, at zero: rates and ratios exist before the first
    job, and an alert on them is never silent for want of a series."""
    for task in tasks:
        for counter in (JOBS_ENQUEUED, JOBS_STARTED, JOBS_SUCCEEDED, JOBS_FAILED, JOBS_RETRIED):
            counter.labels(task)
        for outcome in JOB_OUTCOMES:
            JOB_DURATION.labels(task, outcome)


class QueueGauges(Collector):
    """Exported only while this process sweeps, and only while its reading is fresh: a worker
    that lost the lock (or stalled) stops reporting instead of repeating an old value."""

    def __init__(self) -> None:
        self._reading: tuple[int, float, float] | None = None
        self.max_age_seconds = 30.0

    def record(self, depth: int, oldest_wait_seconds: float) -> None:
        self._reading = (depth, oldest_wait_seconds, time.monotonic())

    def forget(self) -> None:
        self._reading = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = self._reading
        if reading is None or time.monotonic() - reading[2] > self.max_age_seconds:
            return
        depth, oldest, _ = reading
        yield GaugeMetricFamily(
            "glasshouse_jobs_queue_depth", "Jobs due to run and waiting for a worker.", value=depth
        )
        yield GaugeMetricFamily(
            "glasshouse_jobs_oldest_waiting_seconds",
            "How long the longest-waiting due job has waited (0: none waiting).",
            value=oldest,
        )


QUEUE_GAUGES = QueueGauges()
REGISTRY.register(QUEUE_GAUGES)
