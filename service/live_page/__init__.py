"""A live page at /live: sign in, list your items, and watch their events arrive.

A working example of the real-time API for a browser (static HTML and plain JavaScript, served
by the service, nothing from a CDN). The HTML is served by the route below with its
Content-Security-Policy; the script and stylesheet are files under /live/static.
"""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

PATH = "/live"

# Scripts and styles from this origin only, no inline code; the page talks to this origin only
# (its fetches and its WebSocket: 'self' covers ws: and wss: to the same host).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


def mount(app: FastAPI) -> None:
    """Adds /live and its assets under /live/static."""
    page = (files(__name__) / "index.html").read_text(encoding="utf-8")
    app.mount(f"{PATH}/static", StaticFiles(packages=[(__name__, "static")]), name="live_static")

    @app.get(PATH, include_in_schema=False)
    async def live_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
