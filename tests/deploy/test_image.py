"""The Dockerfile: hadolint-clean, multi-stage on uv.lock, a slim Python >= 3.12 base, a numeric
non-root user, settings that exist, and a recipe that works. There is no Docker engine in CI,
so the last test runs the image's own build commands (read from the Dockerfile) on the build
context its .dockerignore allows, then runs the result as the image would: as uid 10001, with
the code read-only and only /tmp and the metrics volume writable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import _create_postgres_database, _drop_postgres_database, unavailable
from tests.deploy.support import (
    ALL_INTERFACES,
    BUILDER,
    DOCKERFILE,
    HADOLINT,
    REPO,
    RUNTIME,
    STAGES,
    TMP,
    setting_names,
)
from tests.processes import free_port
from tests.tools import run_tool, uv_command

DOCKERIGNORE = REPO / ".dockerignore"
# Variables of the image that are not settings of the service.
RUNTIME_VARIABLES = {"PATH", "HOME", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
RUNTIME_VARIABLES |= {"PYTHONFAULTHANDLER"}


def test_hadolint_passes() -> None:
    result = run_tool(HADOLINT, "hadolint", "--no-color", str(DOCKERFILE), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_multi_stage_build_from_the_lock_on_slim_python() -> None:
    assert len(STAGES) >= 2
    for stage in (BUILDER, RUNTIME):
        match = re.fullmatch(
            r"python:3\.(\d+)(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base
        )
        assert match, f"not a slim Python base: {stage.base}"
        assert int(match.group(1)) >= 12
    assert BUILDER.base == RUNTIME.base, "the venv's interpreter path must exist at runtime"
    runs = " ".join(BUILDER.all("RUN"))
    assert "uv sync --frozen --no-dev" in runs
    assert "--no-install-project" in runs, "dependencies get a layer of their own"


def test_runtime_stage_is_minimal() -> None:
    copies = RUNTIME.all("COPY")
    assert copies == ["--from=builder /app /app"], copies
    runs = " ".join(RUNTIME.all("RUN"))
    for forbidden in ("apt-get", "gcc", "build-essential", "pip install", "uv "):
        assert forbidden not in runs, forbidden
    # The builder compiled bytecode: nothing needs to be written at runtime.
    assert BUILDER.env()["UV_COMPILE_BYTECODE"] == "1"
    assert "compileall" in " ".join(BUILDER.all("RUN"))
    assert RUNTIME.env()["PYTHONDONTWRITEBYTECODE"] == "1"


def test_runs_as_a_numeric_unprivileged_user() -> None:
    (user,) = RUNTIME.all("USER")
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER must be numeric (runAsNonRoot verifies numbers): {user}"
    assert int(match.group(1)) >= 10000
    assert int(match.group(2) or match.group(1)) >= 10000
    # The last USER wins: nothing after it switches back.
    assert RUNTIME.instructions.index(("USER", user)) > max(
        i for i, (key, _) in enumerate(RUNTIME.instructions) if key in {"RUN", "COPY"}
    )


def test_command_ports_labels_and_settings() -> None:
    assert RUNTIME.all("CMD") == ['["gunicorn", "-c", "gunicorn.conf.py"]']
    env = RUNTIME.env()
    exposed = {int(port) for args in RUNTIME.all("EXPOSE") for port in args.split()}
    assert exposed == {
        int(env["GLASSHOUSE_HTTP__PORT"]),
        int(env["GLASSHOUSE_OBSERVABILITY__METRICS_PORT"]),
        int(env["GLASSHOUSE_JOBS__WORKER_METRICS_PORT"]),
    }
    assert env["GLASSHOUSE_HTTP__HOST"] == ALL_INTERFACES
    assert env["GLASSHOUSE_OBSERVABILITY__METRICS_HOST"] == ALL_INTERFACES
    unknown = set(env) - setting_names() - RUNTIME_VARIABLES
    assert unknown == set(), f"not settings of the service: {unknown}"
    # The multiprocess directory lies strictly inside a declared volume.
    volumes = re.findall(r'"([^"]+)"', " ".join(RUNTIME.all("VOLUME")))
    metrics_dir = Path(env["GLASSHOUSE_OBSERVABILITY__METRICS_DIR"])
    assert any(Path(volume) in metrics_dir.parents for volume in volumes), volumes
    assert TMP in volumes
    # Job files: a volume of their own (shared by the API and the workers), writable.
    assert env["GLASSHOUSE_JOBS__FILES_DIR"] in volumes
    labels = " ".join(RUNTIME.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert RUNTIME.all("HEALTHCHECK"), "docker and compose use it"


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: against the whole path from the context root (not the
    base name, unlike .gitignore); `**` spans directories, `*` and `?` stay within one."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            regex, i = regex + pattern[i : close + 1], close + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def dockerignore_allows(relative: str) -> bool:
    """The last matching pattern decides ('!' re-includes); a pattern matching a parent
    directory matches everything under it."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        regex = _dockerignore_regex(line.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            allowed = line.startswith("!")
    return allowed


def build_context_files() -> list[Path]:
    return [
        path.relative_to(REPO)
        for path in sorted(REPO.rglob("*"))
        if path.is_file()
        and ".git" not in path.relative_to(REPO).parts
        and ".venv" not in path.relative_to(REPO).parts
        and dockerignore_allows(str(path.relative_to(REPO)))
    ]


def test_build_context_holds_what_the_image_needs_and_nothing_else() -> None:
    context = {str(path) for path in build_context_files()}
    for args in BUILDER.all("COPY"):
        if args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert any(item == source or item.startswith(source + "/") for item in context), source
    for private in (".env", "tests/conftest.py", "uv.lock.bak", ".git/config", "deploy/README.md"):
        assert private not in context
    assert not [item for item in context if "__pycache__" in item or item.endswith(".pyc")]
    assert "service/main.py" in context


# --- The recipe, without Docker -------------------------------------------------------------


@contextlib.contextmanager
def world_readable_directory() -> Iterator[Path]:
    """pytest's tmp_path is private to root; the image's user must be able to read the code."""
    root = Path(tempfile.mkdtemp(prefix="glasshouse-image-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_like_the_dockerfile(context: Path, app: Path, python: str) -> None:
    """The builder stage's COPY and RUN instructions, with /app at ``app``."""
    for relative in build_context_files():
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    app.mkdir()
    env = {**os.environ, **BUILDER.env(), "UV_PYTHON": python}
    env = {name: value.replace("/app", str(app)) for name, value in env.items()}
    for keyword, args in BUILDER.instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, destination = args.split()
            for source in sources:
                target = app / destination
                if destination.endswith("/") or len(sources) > 1:
                    target = target / Path(source).name
                copy_into(context / source, target)
        elif keyword == "RUN":
            # Bind mounts exist for the one command only.
            binds = re.findall(r"--mount=type=bind,source=([^,\s]+),target=([^,\s]+)", args)
            for source, target in binds:
                copy_into(context / source, app / target)
            command = re.sub(r"--mount=\S+\s*", "", args).replace("/app", str(app))
            command = re.sub(r"(^|&&\s*)uv ", rf"\1{shlex.join(uv_command())} ", command)
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=app,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            for _, target in binds:
                (app / target).unlink()
            assert result.returncode == 0, f"RUN {command}\n{result.stderr}"


def copy_into(origin: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if origin.is_dir():
        shutil.copytree(origin, target)
    else:
        shutil.copy2(origin, target)


def runtime_env(
    app: Path, run: Path, port: int, metrics_port: int, database_url: str
) -> dict[str, str]:
    env = {
        name: value.replace("/run/glasshouse", str(run)) for name, value in RUNTIME.env().items()
    }
    env.update(
        PATH=f"{app}/.venv/bin:/usr/bin:/bin",
        GLASSHOUSE_HTTP__PORT=str(port),
        GLASSHOUSE_OBSERVABILITY__METRICS_PORT=str(metrics_port),
        DATABASE_URL=database_url,
        GLASSHOUSE_AUTH__JWT_SECRET="image-recipe-test-secret-" + "x" * 40,
        GLASSHOUSE_AUTH__ARGON2_MEMORY_COST_KIB="64",
        LANG="C.UTF-8",
        # The drain itself is tested elsewhere (tests/test_lifecycle_e2e.py); keep this short.
        GLASSHOUSE_SERVER__DRAIN_SECONDS="0.5",
    )
    return env


def test_image_recipe_builds_and_serves_as_its_unprivileged_user() -> None:
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not Path(python).exists():
        pytest.skip("needs root (to run as uid 10001, as the image does) and /usr/bin/python3")
    uid = int(RUNTIME.all("USER")[0].split(":")[0])
    try:
        database_url = asyncio.run(_create_postgres_database())
    except (OSError, ConnectionError) as exc:
        unavailable(f"PostgreSQL unreachable: {exc}")
    try:
        with world_readable_directory() as root:
            app, run = root / "app", root / "run"
            build_like_the_dockerfile(root / "context", app, python)
            site = next((app / ".venv" / "lib").glob("python3*/site-packages"))
            for dev_only in ("pytest", "ruff", "mypy", "coverage"):
                assert not (site / dev_only).exists(), f"{dev_only} is in the image"
            run.mkdir(mode=0o700)
            os.chown(run, uid, uid)
            os.chown(root / "context", 0, 0)
            port, metrics_port = free_port(), free_port()
            env = runtime_env(app, run, port, metrics_port, database_url)
            as_user = {"user": uid, "group": uid, "extra_groups": [], "env": env, "cwd": app}
            migrate = subprocess.run(
                ["alembic", "upgrade", "head"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                **as_user,  # type: ignore[arg-type]
            )
            assert migrate.returncode == 0, migrate.stderr
            before = {path: path.stat().st_mtime for path in app.rglob("*")}
            serve_and_stop(as_user, port, metrics_port, env)
            after = {path: path.stat().st_mtime for path in app.rglob("*")}
            assert after == before, "the service wrote into its own code directory"
    finally:
        asyncio.run(_drop_postgres_database(database_url))


def serve_and_stop(
    as_user: dict[str, object], port: int, metrics_port: int, env: dict[str, str]
) -> None:
    command = shlex.split(RUNTIME.all("CMD")[0].strip("[]").replace(",", " "))
    healthcheck = re.search(r"CMD (\[.*\])", RUNTIME.all("HEALTHCHECK")[0])
    assert healthcheck
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **as_user)  # type: ignore[call-overload]
        try:
            deadline = time.monotonic() + 60
            startup: httpx.Response | None = None
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(httpx.TransportError):
                    startup = httpx.get(f"http://127.0.0.1:{port}/health/startup", timeout=2)
                    if startup.status_code == 200:
                        break
                time.sleep(0.2)
            log.seek(0)
            output = log.read().decode(errors="replace")
            assert startup is not None, output
            assert startup.status_code == 200, output
            assert startup.json()["migrations"] == "at_head"
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            # The project is installed, not just importable: its metadata gives the version.
            info = re.search(
                r'glasshouse_app_info\{build="[^"]*",version="([^"]+)"\} 1\.0', metrics
            )
            assert info, metrics
            assert info.group(1) != "0.0.0", "the image lost the project's metadata"
            check = subprocess.run(
                json.loads(healthcheck.group(1)),  # the image's HEALTHCHECK
                capture_output=True,
                timeout=10,
                check=False,
                **as_user,  # type: ignore[arg-type]
            )
            assert check.returncode == 0, check.stderr
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(timeout=45) == 0
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                raise
