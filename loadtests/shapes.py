# mypy: allow-subclassing-any, disable-error-code="untyped-decorator"
"""Load shapes: how many simulated users run at each moment of a test.

Each shape reads locust's own `--users`, `--spawn-rate` and `--run-time` (``use_common_options``),
so one command line drives any of them. `LOCUST_SHAPE` (ramp, steady, spike) picks the one the
locustfile exposes; `all` exposes every shape, for the web UI's `--class-picker`.
"""

from __future__ import annotations

import math
import os

from locust import LoadTestShape  # type: ignore[import-not-found]

DEFAULT_RUN_TIME_SECONDS = 60
DEFAULT_USERS = 10
DEFAULT_SPAWN_RATE = 2.0


class _Shape(LoadTestShape):
    abstract = True
    use_common_options = True

    def _options(self) -> tuple[int, float, int]:
        """Users, spawn rate (users per second) and run time (seconds) from the command line."""
        options = getattr(self.runner.environment if self.runner else None, "parsed_options", None)
        users = getattr(options, "num_users", None) or DEFAULT_USERS
        spawn_rate = getattr(options, "spawn_rate", None) or DEFAULT_SPAWN_RATE
        run_time = getattr(options, "run_time", None) or DEFAULT_RUN_TIME_SECONDS
        return int(users), float(spawn_rate), int(run_time)


class SteadyShape(_Shape):
    """Spawn every user at the spawn rate, then hold them until the run time is up."""

    def tick(self) -> tuple[int, float] | None:
        users, spawn_rate, run_time = self._options()
        if self.get_run_time() >= run_time:
            return None
        return users, spawn_rate


class RampShape(_Shape):
    """Grow linearly to every user over the first 80% of the run (where does latency bend?),
    then hold the peak for the rest."""

    def tick(self) -> tuple[int, float] | None:
        users, spawn_rate, run_time = self._options()
        elapsed = self.get_run_time()
        if elapsed >= run_time:
            return None
        ramp_seconds = 0.8 * run_time
        target = max(1, math.ceil(users * min(1.0, elapsed / ramp_seconds)))
        return target, spawn_rate


class SpikeShape(_Shape):
    """A fifth of the users as a baseline; between 40% and 60% of the run every user arrives
    within about a second (a marketing email, a retry storm); then back to the baseline, so the
    last part shows whether the service recovers."""

    def tick(self) -> tuple[int, float] | None:
        users, spawn_rate, run_time = self._options()
        elapsed = self.get_run_time()
        if elapsed >= run_time:
            return None
        baseline = max(1, users // 5)
        if 0.4 * run_time <= elapsed < 0.6 * run_time:
            return users, max(spawn_rate, float(users))
        return baseline, max(spawn_rate, float(users))


SHAPES: dict[str, type[LoadTestShape]] = {
    "steady": SteadyShape,
    "ramp": RampShape,
    "spike": SpikeShape,
}


def selected_shapes() -> dict[str, type[LoadTestShape]]:
    """The shape classes to expose, by `LOCUST_SHAPE` (default: steady)."""
    name = os.environ.get("LOCUST_SHAPE", "steady").strip().lower()
    if name == "all":
        return {cls.__name__: cls for cls in SHAPES.values()}
    if name not in SHAPES:
        known = ", ".join([*SHAPES, "all"])
        raise SystemExit(f"LOCUST_SHAPE={name!r} is not one of: {known}")
    return {SHAPES[name].__name__: SHAPES[name]}
