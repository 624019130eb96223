"""The ceiling: a bare FastAPI app, no middleware, no database, returning the same JSON bytes
as a cached item read. Run by bench/run.py under the same gunicorn settings as the service."""

from fastapi import FastAPI
from fastapi.responses import Response

ITEM_JSON = (
    b'{"id":1,"owner_id":1,"title":"Water the ferns","description":"Twice a week, not on '
    b'Sundays.","status":"todo","priority":3,"created_at":"2026-11-24T21:00:00Z",'
    b'"updated_at":"2026-11-24T21:00:00Z"}'
)

# FastAPI's native telemetry off, as in the service (service/main.py): the ceiling pays no
# per-request check the service does not pay either.
app = FastAPI(
    telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/item")
async def item() -> Response:
    return Response(ITEM_JSON, media_type="application/json")
