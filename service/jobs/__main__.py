"""``python -m service.jobs``: the job worker, with taskiq's worker options from the settings."""

import sys

from taskiq.cli.worker.args import WorkerArgs
from taskiq.cli.worker.run import run_worker

from service.settings import get_settings


def main() -> int:
    jobs = get_settings().jobs
    args = WorkerArgs.from_cli(
        [
            "service.jobs.worker:broker",
            # One process per pod: scale with replicas; each pod's metrics are its own.
            "--workers=1",
            f"--max-async-tasks={jobs.concurrency}",
            f"--max-prefetch={jobs.concurrency}",
            # A message is acknowledged once its attempt ends: a worker that dies leaves it
            # pending (and the sweeper requeues the job sooner, from its lapsed lease).
            "--ack-type=when_executed",
            f"--wait-tasks-timeout={jobs.shutdown_wait_seconds}",
            # structlog (service/observability) configures logging, as in the API.
            "--no-configure-logging",
            *sys.argv[1:],
        ]
    )
    return run_worker(args) or 0


if __name__ == "__main__":
    sys.exit(main())
