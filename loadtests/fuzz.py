"""API fuzzing: schemathesis generates requests for every operation in /openapi.json (valid and
invalid ones, and stateful sequences following the links it infers) against the whole service,
and checks every answer against the schema.

    uv run python loadtests/fuzz.py                      # the long run: 300 examples per operation
    uv run python loadtests/fuzz.py --max-examples 25    # what CI runs (tests/test_fuzz.py)

gunicorn (2 workers) on a fresh PostgreSQL database with the shared Redis, as in loadtests/run.py,
plus a bootstrapped admin. fuzz.py registers and logs in a user first; loadtests/fuzz_hooks.py
then authenticates every request, as that user or, for the admin operations, as the admin (with
an API key where the operation accepts one, else a login session's token), and adds the OpenAPI
links the stateful phase follows.
schemathesis runs from its own pinned tool environment, with loadtests/schemathesis.toml.
Reports land in --reports (loadtests/reports/fuzz): schemathesis.txt (its console, with a curl
line reproducing each failure), schemathesis.json, junit.xml and the service's log. The exit
code is schemathesis's: 0 when no check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.stack import running_service
from tests.tools import tool_command

REPO = Path(__file__).resolve().parents[1]
SCHEMATHESIS = "schemathesis==4.32.5"
CONFIG = REPO / "loadtests" / "schemathesis.toml"
HOOKS = REPO / "loadtests" / "fuzz_hooks.py"
ADMIN_EMAIL = "fuzz-admin@example.com"
ADMIN_PASSWORD = "fuzz-admin-password-42"  # noqa: S105 (a throwaway database's admin)
FUZZ_LIMIT = 1_000_000  # the API-key limits, out of the fuzzer's reach (run_fuzz says why)
# Beyond what the examples take: start-up, and the stateful phase's sequences.
OVERHEAD_SECONDS = 180


@dataclass(frozen=True)
class FuzzRun:
    exit_code: int
    output: str  # schemathesis's console: each failure with a curl line reproducing it
    report: dict[str, Any]  # its JSON run report

    def failing_operations(self, code: str) -> list[str]:
        """Operations with a failure of this kind (e.g. ST101: server error)."""
        return sorted(
            operation
            for failure in self.report.get("failures", [])
            if failure["code"] == code
            for operation in failure["operations"]
        )

    @property
    def failure_codes(self) -> set[str]:
        return {failure["code"] for failure in self.report.get("failures", [])}


def register_user(base_url: str) -> tuple[str, str]:
    email, password = f"fuzz-{uuid.uuid4().hex[:12]}@example.com", uuid.uuid4().hex
    with httpx.Client(base_url=base_url, timeout=10) as client:
        registered = client.post(
            "/api/v1/auth/register", json={"email": email, "password": password}
        )
        registered.raise_for_status()
        tokens = client.post("/api/v1/auth/token", data={"username": email, "password": password})
        tokens.raise_for_status()  # the account works before the fuzzer starts
    return email, password


def schemathesis_command(
    base_url: str, reports: Path, *, max_examples: int, seed: int, workers: int
) -> list[str]:
    return [
        *tool_command(SCHEMATHESIS, "schemathesis"),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--continue-on-failure",
        "--request-timeout",
        "10",
        "--report",
        "json,junit",
        "--report-json-path",
        str(reports / "schemathesis.json"),
        "--report-junit-path",
        str(reports / "junit.xml"),
    ]


def run_fuzz(
    workdir: Path, reports: Path, *, max_examples: int, seed: int = 1, workers: int = 1
) -> FuzzRun:
    """Boots the service, fuzzes it, stops it. Bounded by a timeout on schemathesis."""
    reports.mkdir(parents=True, exist_ok=True)
    with running_service(
        workdir,
        workers=2,
        production_hashes=False,  # the fuzzer registers and logs in thousands of times
        GLASSHOUSE_HTTP__API_DOCS="true",  # the fuzzer reads /openapi.json (off in production)
        GLASSHOUSE_AUTH__BOOTSTRAP_ADMIN_EMAIL=ADMIN_EMAIL,
        GLASSHOUSE_AUTH__BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        # The fuzzer makes service accounts and keys as the fuzzing user, and sends invalid keys
        # (its ignored_auth probes, its negative cases) by the thousand, all from 127.0.0.1. At
        # the default limits the hooks' own accounts and keys would be refused (409), and so
        # would every key from 127.0.0.1 not yet cached (429): the run would fuzz the limits.
        GLASSHOUSE_API_KEYS__MAX_SERVICE_ACCOUNTS_PER_USER=str(FUZZ_LIMIT),
        GLASSHOUSE_API_KEYS__MAX_KEYS_PER_SERVICE_ACCOUNT=str(FUZZ_LIMIT),
        GLASSHOUSE_API_KEYS__MAX_FAILURES_PER_ADDRESS=str(FUZZ_LIMIT),
    ) as service:
        email, password = register_user(service.url)
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(HOOKS),
            "FUZZ_BASE_URL": service.url,
            "FUZZ_USER_EMAIL": email,
            "FUZZ_USER_PASSWORD": password,
            "FUZZ_ADMIN_EMAIL": ADMIN_EMAIL,
            "FUZZ_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        command = schemathesis_command(
            service.url, reports, max_examples=max_examples, seed=seed, workers=workers
        )
        try:
            completed = subprocess.run(  # noqa: S603 (a fixed command line)
                command,
                cwd=reports,  # where schemathesis keeps its example database, for `st replay`
                env=env,
                capture_output=True,
                text=True,
                timeout=OVERHEAD_SECONDS + max_examples * 4,
                check=False,
            )
        finally:
            shutil.copy(service.log_path, reports / "service.log")
    output = completed.stdout + completed.stderr
    (reports / "schemathesis.txt").write_text(output)
    report_path = reports / "schemathesis.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return FuzzRun(completed.returncode, output, report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=300, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="schemathesis's concurrency")
    parser.add_argument("--reports", type=Path, default=REPO / "loadtests" / "reports" / "fuzz")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="glasshouse-fuzz-") as workdir:
        run = run_fuzz(
            Path(workdir),
            args.reports.resolve(),
            max_examples=args.max_examples,
            seed=args.seed,
            workers=args.workers,
        )
    print(run.output)
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
