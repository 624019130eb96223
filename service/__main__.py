"""`python -m service`: run the service in one process (uvicorn), for local development.

Production runs gunicorn with uvicorn workers instead (`gunicorn -c gunicorn.conf.py`).
"""

import sys

import uvicorn

from service.http_protocol import HeadLimitedHttpToolsProtocol
from service.observability.setup import start_metrics_listener
from service.server import StreamEndingServer, websocket_options
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    where = f"http://{settings.http.host}:{settings.http.port}"
    metrics_where = start_metrics_listener(settings)
    print(
        f"Glasshouse listening on {where}  (API docs: {where}/docs, "
        f"metrics: {metrics_where or 'off'}, database: {settings.database.url.split('@')[-1]})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        "service.main:create_app",
        factory=True,
        host=settings.http.host,
        port=settings.http.port,
        log_config=None,  # create_app configures logging: JSON or console, per settings
        access_log=False,  # the app writes one canonical line per request itself
        http=HeadLimitedHttpToolsProtocol,  # httptools with a limit on request heads
        proxy_headers=False,  # the app reads X-Forwarded-For itself, validated
        **websocket_options(settings),
    )
    StreamEndingServer(config).run()


if __name__ == "__main__":
    main()
