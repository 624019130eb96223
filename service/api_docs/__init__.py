"""Swagger UI at /docs and ReDoc at /redoc, every script and stylesheet served by the service.

The JavaScript and CSS are the ones the fastapi-offline package ships; the pages are written here
(FastAPI's own page builders emit an inline script), so the Content-Security-Policy can refuse
inline scripts and anything from another origin: the docs work where no CDN can be reached.
"""

from html import escape

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_PATH = "/docs/static"

# ReDoc's styled-components inject <style> elements, hence 'unsafe-inline' in style-src only;
# its search index runs in a worker built from a blob: URL. The Redocly logo ReDoc's sidebar
# links from a CDN is refused by img-src: one missing image, no request out.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

SWAGGER_UI_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - Swagger UI</title>
<link rel="icon" href="{static}/favicon.png">
<link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{static}/swagger-ui-init.js"></script>
</body>
</html>
"""

REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - ReDoc</title>
<link rel="icon" href="{static}/favicon.png">
</head>
<body>
<redoc spec-url="{openapi}"></redoc>
<script src="{static}/redoc.standalone.js"></script>
</body>
</html>
"""


def mount(app: FastAPI, *, openapi_url: str) -> None:
    """Adds /docs, /redoc and their assets under /docs/static."""
    # This package's own files (swagger-ui-init.js) first, then fastapi-offline's vendored ones.
    assets = StaticFiles(packages=[("service.api_docs", "static"), ("fastapi_offline", "static")])
    app.mount(STATIC_PATH, assets, name="api_docs_static")

    def page(template: str, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = template.format(
            title=escape(app.title),
            static=escape(root + STATIC_PATH),
            openapi=escape(root + openapi_url),
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return page(SWAGGER_UI_PAGE, request)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return page(REDOC_PAGE, request)
