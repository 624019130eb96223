# mypy: allow-subclassing-any, disable-error-code="untyped-decorator"
"""Pass/fail limits for a load test: a headless run exits non-zero when one is broken.

Limits come from the command line or the environment (every option has a `LOCUST_*` variable):

- `--max-fail-ratio` / `LOCUST_MAX_FAIL_RATIO`: failed requests over all requests (0.01).
- `--p95-ms`, `--p99-ms` / `LOCUST_P95_MS`, `LOCUST_P99_MS`: latency percentiles every endpoint
  must stay under (500 ms, 1500 ms).
- `--auth-p95-ms`, `--auth-p99-ms`: the same for the endpoints that hash a password with argon2
  (sign up, log in: slow on purpose), 3000 ms and 6000 ms.
- `--limits` / `LOCUST_LIMITS`: JSON overrides per endpoint name, e.g.
  `{"GET /api/v1/items/[id]": {"p95": 200, "p99": 400}}`.
- `--min-samples` / `LOCUST_MIN_SAMPLES`: endpoints with fewer requests are reported but their
  percentiles are not judged (a p99 of 3 samples is just the slowest one) (default 5).

Expected error answers (wrong password, 404, 422: see journeys.py) are successes when they get
the expected status, so they count as failures only when the service answers otherwise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from locust import events  # type: ignore[import-not-found]
from locust.runners import WorkerRunner  # type: ignore[import-not-found]

log = logging.getLogger("glasshouse.thresholds")

# Endpoints that run argon2 (deliberately slow, CPU-bound): their own, looser latency limits.
PASSWORD_HASHING_ENDPOINTS = frozenset(
    {"POST /api/v1/auth/register", "POST /api/v1/auth/token", "bad: wrong password"}
)


@dataclass(frozen=True)
class Limits:
    max_fail_ratio: float
    p95_ms: float
    p99_ms: float
    auth_p95_ms: float
    auth_p99_ms: float
    min_samples: int
    per_endpoint: dict[str, dict[str, float]]

    def for_endpoint(self, name: str) -> tuple[float, float]:
        hashing = name in PASSWORD_HASHING_ENDPOINTS
        p95 = self.auth_p95_ms if hashing else self.p95_ms
        p99 = self.auth_p99_ms if hashing else self.p99_ms
        override = self.per_endpoint.get(name, {})
        return float(override.get("p95", p95)), float(override.get("p99", p99))

    @classmethod
    def from_options(cls, options: Any) -> Limits:
        per_endpoint = json.loads(options.limits) if options.limits else {}
        if not isinstance(per_endpoint, dict):
            raise SystemExit("--limits / LOCUST_LIMITS must be a JSON object")
        return cls(
            max_fail_ratio=options.max_fail_ratio,
            p95_ms=options.p95_ms,
            p99_ms=options.p99_ms,
            auth_p95_ms=options.auth_p95_ms,
            auth_p99_ms=options.auth_p99_ms,
            min_samples=options.min_samples,
            per_endpoint=per_endpoint,
        )


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("Glasshouse pass/fail limits")
    group.add_argument(
        "--max-fail-ratio",
        type=float,
        env_var="LOCUST_MAX_FAIL_RATIO",
        default=0.01,
        help="Largest share of failed requests, 0-1",
    )
    for option, env, default, what in (
        ("--p95-ms", "LOCUST_P95_MS", 500.0, "95th"),
        ("--p99-ms", "LOCUST_P99_MS", 1500.0, "99th"),
        ("--auth-p95-ms", "LOCUST_AUTH_P95_MS", 3000.0, "95th (password hashing endpoints)"),
        ("--auth-p99-ms", "LOCUST_AUTH_P99_MS", 6000.0, "99th (password hashing endpoints)"),
    ):
        group.add_argument(
            option, type=float, env_var=env, default=default, help=f"Largest {what} percentile"
        )
    group.add_argument(
        "--min-samples",
        type=int,
        env_var="LOCUST_MIN_SAMPLES",
        default=5,
        help="Endpoints with fewer requests are not judged on percentiles",
    )
    group.add_argument(
        "--limits",
        type=str,
        env_var="LOCUST_LIMITS",
        default="",
        help='JSON per endpoint, e.g. {"GET /api/v1/items": {"p95": 200, "p99": 400}}',
    )


def violations(stats: Any, limits: Limits) -> list[str]:
    """Every broken limit, in words; empty when the run passes."""
    broken: list[str] = []
    total = stats.total
    if total.num_requests == 0:
        return ["no request was made"]
    if total.fail_ratio > limits.max_fail_ratio:
        broken.append(
            f"failure ratio {total.fail_ratio:.2%} > {limits.max_fail_ratio:.2%} "
            f"({total.num_failures} of {total.num_requests})"
        )
    for entry in sorted(stats.entries.values(), key=lambda e: (e.name, e.method)):
        name = entry.name if entry.name.startswith("bad: ") else f"{entry.method} {entry.name}"
        if entry.num_requests < limits.min_samples:
            continue
        max_p95, max_p99 = limits.for_endpoint(name)
        p95 = entry.get_response_time_percentile(0.95)
        p99 = entry.get_response_time_percentile(0.99)
        if p95 > max_p95:
            broken.append(f"{name}: p95 {p95:.0f} ms > {max_p95:.0f} ms")
        if p99 > max_p99:
            broken.append(f"{name}: p99 {p99:.0f} ms > {max_p99:.0f} ms")
    return broken


@events.test_stop.add_listener
def _judge_the_run(environment: Any, **_: Any) -> None:
    """When a run stops (headless: before exiting; web UI: after each run)."""
    _judge(environment)


@events.quitting.add_listener
def _judge_before_exit(environment: Any, **_: Any) -> None:
    """Again at exit, on the final stats (the users' on_stop requests included)."""
    _judge(environment)


_verdicts: list[list[str]] = []


def _judge(environment: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the aggregated stats
    limits = Limits.from_options(environment.parsed_options)
    broken = violations(environment.runner.stats, limits)
    environment.process_exit_code = 1 if broken else 0
    if _verdicts and _verdicts[-1] == broken:
        return  # said already
    _verdicts.append(broken)
    for line in broken:
        log.error("limit broken: %s", line)
    if not broken:
        log.info("every limit held")
