# syntax=docker/dockerfile:1.7
# The production image: `docker build -t glasshouse:0.1.0 .` (see deploy/README.md).
# Two stages: the builder resolves uv.lock into /app/.venv; the runtime stage gets that
# environment and the source, nothing else (no uv, no cache, no compilers), and runs as an
# unprivileged numeric user on a read-only root filesystem.

# uv itself, pinned; only the builder stage uses it.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.12-slim-bookworm AS builder
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled now (the runtime cannot write it); the image's own Python, never a download.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first, in a layer of their own: it is rebuilt only when uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
COPY pyproject.toml uv.lock README.md alembic.ini gunicorn.conf.py ./
COPY service ./service
# The project itself (its metadata gives the service its version), then its bytecode.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && /app/.venv/bin/python -m compileall -q service gunicorn.conf.py

# The same base as the builder: the virtual environment points at its /usr/local/bin/python3.
FROM python:3.12-slim-bookworm AS runtime
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="glasshouse" \
      org.opencontainers.image.description="Glasshouse: FastAPI users, JWT auth and items on PostgreSQL and Redis, served by gunicorn with uvicorn workers." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim-bookworm"

# A numeric, unprivileged user (Kubernetes' runAsNonRoot can verify a number, not a name).
RUN groupadd --system --gid 10001 glasshouse \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin glasshouse \
    && install --directory --owner=10001 --group=10001 --mode=0700 /run/glasshouse

# Owned by root, so the service cannot change its own code or environment.
COPY --from=builder /app /app
WORKDIR /app

# Everything the service writes goes to /tmp and /run/glasshouse: volumes in Kubernetes
# (emptyDir) and compose (tmpfs), so the root filesystem can be read-only. The metrics
# directory is a subdirectory because gunicorn empties it by deleting and re-creating it.
# Job files go to /var/lib/glasshouse/files, a volume the API and the workers share.
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    GLASSHOUSE_ENVIRONMENT=production \
    GLASSHOUSE_HTTP__HOST=0.0.0.0 \
    GLASSHOUSE_HTTP__PORT=8000 \
    GLASSHOUSE_OBSERVABILITY__METRICS_HOST=0.0.0.0 \
    GLASSHOUSE_OBSERVABILITY__METRICS_PORT=9100 \
    GLASSHOUSE_OBSERVABILITY__METRICS_DIR=/run/glasshouse/metrics \
    GLASSHOUSE_OBSERVABILITY__LOG_FORMAT=json \
    GLASSHOUSE_JOBS__FILES_DIR=/var/lib/glasshouse/files \
    GLASSHOUSE_JOBS__WORKER_METRICS_PORT=9101
RUN mkdir -p /var/lib/glasshouse/files && chown 10001:10001 /var/lib/glasshouse/files
VOLUME ["/tmp", "/run/glasshouse", "/var/lib/glasshouse/files"]

USER 10001:10001
# 8000: the API (gunicorn); 9100: /metrics, served by the gunicorn master for all workers;
# 9101: a job worker's /metrics and /livez (python -m service.jobs).
EXPOSE 8000 9100 9101
# For docker and compose; Kubernetes uses the probes in deploy/k8s instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('GLASSHOUSE_HTTP__PORT', '8000'), timeout=2)"]
# gunicorn is PID 1: it gets SIGTERM, drains (readiness 503) and reaps its workers itself.
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
