"""`python -m service`: run the service for local development (one process, uvicorn).

Production runs gunicorn with uvicorn workers instead; see the README.
"""

import sys

import uvicorn

from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    where = f"http://{settings.http.host}:{settings.http.port}"
    print(
        f"Glasshouse listening on {where}  (API docs: {where}/docs, "
        f"database: {settings.database.url.split('@')[-1]})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=settings.http.host,
        port=settings.http.port,
    )


if __name__ == "__main__":
    main()
