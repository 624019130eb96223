"""LeanRoute (service/routing.py) answers requests of its narrow shape without FastAPI's general
request handler: every answer must be the one the general handler gives."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import JSONResponse, Response

from service.auth.dependencies import get_access_claims
from service.main import create_app
from service.routing import LeanRoute
from service.settings import Settings
from tests.factories import API, make_account, make_item

# --- a small app, mounted both ways -----------------------------------------------------------

bearer = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)


async def caller(request: Request) -> str:
    token = await bearer(request)
    if token != "good":
        raise HTTPException(status_code=401, detail="no")
    return "alice"


async def checked_route(http_request: Request) -> None:
    """A route-level dependency whose value is not used, taking the request by another name."""
    if http_request.headers.get("x-block") == "yes":
        raise HTTPException(status_code=403, detail="blocked")


async def thing(
    request: Request,
    who: Annotated[str, Depends(caller)],
    thing_id: Annotated[int, Path(ge=1, le=1000)],
    part: Annotated[str, Path(max_length=5)],
) -> Response:
    return JSONResponse({"who": who, "thing_id": thing_id, "part": part, "path": request.url.path})


def small_app(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    app.router.add_api_route(
        "/things/{thing_id}/{part}",
        thing,
        methods=["GET"],
        dependencies=[Depends(checked_route)],
        route_class_override=route_class,
    )
    return app


async def answers(app: FastAPI, requests: list[tuple[str, dict[str, str]]]) -> list[Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [_comparable(await client.get(path, headers=headers)) for path, headers in requests]


def _comparable(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    body = response.json() if response.content else None
    if isinstance(body, dict):
        body.pop("request_id", None)  # the problem body names its own request
    return response.status_code, body, headers


GOOD = {"authorization": "Bearer good"}
SMALL_APP_REQUESTS = [
    ("/things/7/abc", GOOD),
    ("/things/7/abc", {}),  # no token: the dependency refuses before the path is validated
    ("/things/7/abc", {"authorization": "Bearer bad"}),
    ("/things/7/abc", {**GOOD, "x-block": "yes"}),  # the route-level dependency refuses
    ("/things/0/abc", GOOD),
    ("/things/x/abc", GOOD),
    ("/things/0/abcdefgh", GOOD),  # both parameters invalid: both reported
    ("/things/1001/abc", {}),
    ("/things/7", GOOD),  # no route
]


async def test_a_lean_route_answers_what_the_general_route_answers() -> None:
    lean, general = small_app(LeanRoute), small_app(APIRoute)
    assert [r.lean for r in lean.routes if isinstance(r, LeanRoute)] == [True]
    lean_answers = await answers(lean, SMALL_APP_REQUESTS)
    assert lean_answers == await answers(general, SMALL_APP_REQUESTS)
    assert lean_answers[0][:2] == (
        200,
        {"who": "alice", "thing_id": 7, "part": "abc", "path": "/things/7/abc"},
    )
    assert [status for status, _, _ in lean_answers] == [
        200,
        401,
        401,
        403,
        422,
        422,
        422,
        401,
        404,
    ]
    assert len(lean_answers[6][1]["detail"]) == 2


async def test_overridden_dependencies_are_honoured() -> None:
    app = small_app(LeanRoute)

    async def someone_else() -> str:
        return "bob"

    app.dependency_overrides[caller] = someone_else
    ((status, body, _),) = await answers(app, [("/things/7/abc", {})])
    assert (status, body["who"]) == (200, "bob")
    app.dependency_overrides.clear()
    ((status, _, _),) = await answers(app, [("/things/7/abc", {})])
    assert status == 401


async def test_an_endpoint_that_breaks_its_response_annotation_is_an_error() -> None:
    async def lying() -> Response:
        return {"not": "a response"}  # type: ignore[return-value]

    app = FastAPI()
    app.router.add_api_route("/lying", lying, route_class_override=LeanRoute)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(TypeError, match="annotated to return a Response"):
            await client.get("/lying")


async def _yielding(request: Request) -> AsyncIterator[str]:
    yield "x"


def _sync(request: Request) -> str:
    return "x"


async def _nested(who: Annotated[str, Depends(caller)]) -> str:
    return who


async def _with_header(x_thing: Annotated[str, Header()]) -> str:
    return x_thing


async def _plain(request: Request) -> str:
    return "x"


async def _keyword_only(*, request: Request) -> str:
    return "x"


def _endpoint_taking(dependency: Callable[..., Any]) -> Callable[..., Awaitable[Response]]:
    async def endpoint(value: Annotated[str, Depends(dependency)]) -> Response:
        return Response(value)

    return endpoint


async def _with_query(request: Request, q: str) -> Response:
    return Response(q)


async def _returning_a_model() -> dict[str, str]:
    return {}


def _sync_endpoint() -> Response:
    return Response()


async def _repeating(
    a: Annotated[str, Depends(_plain)], b: Annotated[str, Depends(_plain)]
) -> Response:
    return Response(a + b)


@pytest.mark.parametrize(
    ("endpoint", "lean"),
    [
        (thing, True),
        (_endpoint_taking(_plain), True),
        (_endpoint_taking(get_access_claims), True),  # the service's bearer dependency
        (_endpoint_taking(_keyword_only), False),
        (_endpoint_taking(_yielding), False),
        (_endpoint_taking(_sync), False),
        (_endpoint_taking(_nested), False),
        (_endpoint_taking(_with_header), False),
        (_with_query, False),
        (_returning_a_model, False),
        (_sync_endpoint, False),
        (_repeating, False),  # FastAPI calls it once and shares the value
    ],
)
def test_only_routes_of_the_lean_shape_take_the_lean_way(
    endpoint: Callable[..., Any], lean: bool
) -> None:
    assert LeanRoute("/x/{thing_id}/{part}", endpoint).lean is lean


# --- the service's own item read, both ways ---------------------------------------------------


async def _unused_dependency() -> None:
    return None


async def test_the_item_read_answers_the_same_both_ways(
    settings: Settings, empty_database: AsyncEngine
) -> None:
    """The service's cached item read is a lean route; any dependency override sends it the
    general way, which must answer every kind of request the same."""
    app = create_app(settings)
    read_route = next(
        r for r in app.routes if isinstance(r, LeanRoute) and r.path == f"{API}/items/{{item_id}}"
    )
    assert read_route.lean
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            owner, stranger = await make_account(client), await make_account(client)
            item = await make_item(client, owner)
            path = f"{API}/items/{item['id']}"
            etag = (await client.get(path, headers=owner.headers)).headers["etag"]
            requests = [
                (path, owner.headers),  # from the cache
                (path, {**owner.headers, "cache-control": "no-cache"}),  # from the database
                (path, {**owner.headers, "if-none-match": etag}),
                (path, stranger.headers),
                (path, {}),
                (path, {"authorization": "Bearer not-a-token"}),
                (f"{API}/items/0", owner.headers),
                (f"{API}/items/abc", owner.headers),
                (f"{API}/items/99999999999999999999", owner.headers),
                (f"{API}/items/{item['id'] + 1}", owner.headers),
            ]

            async def answer_all() -> list[Any]:
                return [
                    _comparable(await client.get(p, headers=headers)) for p, headers in requests
                ]

            lean = await answer_all()
            app.dependency_overrides[_unused_dependency] = _unused_dependency
            general = await answer_all()
    assert lean == general
    assert [status for status, _, _ in lean] == [200, 200, 304, 404, 401, 401, 422, 422, 422, 404]
