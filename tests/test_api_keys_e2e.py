"""API keys end to end: gunicorn with 2 workers on PostgreSQL and a redis-server of the tests'
own, every request traced to a sink this test runs. Which worker answered a request, and whether
it checked the key from the cache, is read from the request's trace: its server span's
``service.instance.id`` (one per worker) and whether a span read the key from the database.

A key's answer cached on both workers is refused by both from the very next request after its
revocation, its owner's deactivation or its rotation without grace; no key reaches a log line
or a span; and a pod whose Redis path is stalled refuses a key revoked through another pod
within 1 s, as it does a login session (tests/test_coherence_e2e.py)."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.coherence import STALE_BOUND_SECONDS
from tests.faults import ProxyMode, RedisServer, TcpProxy, running_proxy, running_redis
from tests.processes import (
    ExportedSpan,
    Gunicorn,
    OtlpSink,
    migrated_postgres_database,
    running_gunicorn,
    running_otlp_sink,
)

API = "/api/v1"
ME = f"{API}/users/me"  # a key with profile:read reaches it
WORKERS = 2
ADMIN_EMAIL = "keys-admin@example.com"
ADMIN_PASSWORD = "keys-admin-password"
SERVER_SPAN = 2  # OTLP's SPAN_KIND_SERVER
SPAN_WAIT_SECONDS = 5.0
ROUND = 6  # requests sent before looking at which workers answered them
MAX_WARMING_REQUESTS = 60
MAX_PROBES = 30  # fewer than the failed-key limit per address (50)
STALLED_PROBE_SECONDS = 2.5  # how long pod B is asked after the revocation
PROBE_LOOPS = 2
PROBE_PAUSE_SECONDS = 0.1
# Under the failed-key limit per address (50), which each worker counts alone while its Redis
# path is stalled: a 429 would say nothing about the revocation.
MAX_STALLED_PROBES = 40
EXTRA_ROUND = 4  # probes at once after the window, until every worker has answered one
MAX_EXTRA_PROBES = 40
CONFIGURATIONS = {
    "default": {},
    # Each worker keeps copies of cached answers: a key's answer is then in each worker's memory.
    "near_cache": {"GLASSHOUSE_CACHE__NEAR_CACHE": "true"},
}


def traced(sink: OtlpSink, **settings: str) -> dict[str, str]:
    """Every request traced and exported at once; shut down without draining."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "GLASSHOUSE_OBSERVABILITY__TRACE_SAMPLE_RATIO": "1.0",
        "GLASSHOUSE_SERVER__DRAIN_SECONDS": "0",
        **settings,
    }


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with running_otlp_sink() as otlp_sink:
        yield otlp_sink


@pytest.fixture(scope="module", params=list(CONFIGURATIONS))
def configuration(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def service(
    configuration: str,
    database_url: str,
    redis_server: RedisServer,
    sink: OtlpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gunicorn]:
    with running_gunicorn(
        database_url,
        tmp_path_factory.mktemp(f"gunicorn-{configuration}"),
        workers=WORKERS,
        REDIS_URL=redis_server.url,
        GLASSHOUSE_CACHE__KEY_PREFIX=f"keys-{secrets.token_hex(4)}",
        GLASSHOUSE_AUTH__BOOTSTRAP_ADMIN_EMAIL=ADMIN_EMAIL,
        GLASSHOUSE_AUTH__BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        **traced(sink, **CONFIGURATIONS[configuration]),
    ) as server:
        yield server


# --- owners, keys, and which worker answered ---------------------------------------------------


@dataclass(frozen=True)
class Owner:
    id: int
    headers: dict[str, str]  # a login session's
    account_id: int  # a service account of theirs


def new_owner(service: Gunicorn) -> Owner:
    headers = service.new_account_headers()
    me = httpx.get(f"{service.url}{ME}", headers=headers)
    assert me.status_code == 200, me.text
    account = httpx.post(
        f"{service.url}{API}/service-accounts", json={"name": "deploy-bot"}, headers=headers
    )
    assert account.status_code == 201, account.text
    return Owner(me.json()["id"], headers, account.json()["id"])


def new_key(service: Gunicorn, owner: Owner) -> dict[str, str]:
    """The created key's JSON: ``key`` is the key itself, ``id`` its public id."""
    created = httpx.post(
        f"{service.url}{API}/service-accounts/{owner.account_id}/keys",
        json={"name": "ci", "scopes": ["profile:read", "items:read"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    key: dict[str, str] = created.json()
    return key


def key_headers(key: str, address: str) -> dict[str, str]:
    # Each test refuses keys from an address of its own: the failed-key limit is per address.
    return {"X-API-Key": key, "X-Forwarded-For": address}


def send(service: Gunicorn, headers: dict[str, str], count: int) -> list[httpx.Response]:
    # A new connection per request, so the kernel spreads them over both workers.
    return [httpx.get(f"{service.url}{ME}", headers=headers, timeout=10) for _ in range(count)]


def trace_id(response: httpx.Response) -> str:
    return response.headers["traceresponse"].split("-")[1]


@dataclass(frozen=True)
class Handled:
    worker: str  # the answering worker's service.instance.id
    key_read_from_database: bool
    asked_redis: bool  # False: every cache lookup answered from the worker's own copies


def handled(sink: OtlpSink, responses: list[httpx.Response]) -> list[Handled]:
    """How each response's worker handled it, from its trace (each worker exports every 100 ms:
    waited for, within SPAN_WAIT_SECONDS)."""
    wanted = {trace_id(response) for response in responses}
    deadline = time.monotonic() + SPAN_WAIT_SECONDS
    while True:
        spans = sink.snapshot()
        servers = {s.trace_id: s for s in spans if s.kind == SERVER_SPAN and not s.parent_span_id}
        if wanted <= servers.keys():
            break
        assert time.monotonic() < deadline, f"no server span for {wanted - servers.keys()}"
        time.sleep(0.05)
    by_trace: dict[str, list[ExportedSpan]] = defaultdict(list)
    for span in spans:
        if span.trace_id in wanted:
            by_trace[span.trace_id].append(span)
    return [
        Handled(
            worker=servers[trace_id(response)].resource["service.instance.id"],
            key_read_from_database=any(
                "FROM api_keys" in str(span.attributes.get("db.statement", ""))
                for span in by_trace[trace_id(response)]
            ),
            asked_redis=any(span.name == "MGET" for span in by_trace[trace_id(response)]),
        )
        for response in responses
    ]


def cache_on_every_worker(
    service: Gunicorn, sink: OtlpSink, headers: dict[str, str], configuration: str
) -> None:
    """Uses the key until every worker has answered it from its cache (a worker caches a key's
    answer from its second use: the first tells it whose key it is), from its own copy when
    the near cache is on."""
    in_memory = configuration == "near_cache"
    cached_by: set[str] = set()
    sent = 0
    while len(cached_by) < WORKERS:
        assert sent < MAX_WARMING_REQUESTS, f"answered from the cache by {cached_by} only"
        responses = send(service, headers, ROUND)
        sent += ROUND
        assert [r.status_code for r in responses] == [200] * ROUND, responses[-1].text
        cached_by |= {
            h.worker
            for h in handled(sink, responses)
            if not h.key_read_from_database and not (in_memory and h.asked_redis)
        }


def probe_every_worker(
    service: Gunicorn, sink: OtlpSink, headers: dict[str, str]
) -> list[tuple[httpx.Response, str]]:
    """Every response, with its worker, until every worker has answered at least once. Nothing
    is retried: each of them counts."""
    answered: list[tuple[httpx.Response, str]] = []
    while len({worker for _, worker in answered}) < WORKERS:
        assert len(answered) < MAX_PROBES, f"only one worker answered: {answered}"
        responses = send(service, headers, ROUND)
        answered += [
            (r, h.worker) for r, h in zip(responses, handled(sink, responses), strict=True)
        ]
    return answered


def answers(probed: list[tuple[httpx.Response, str]]) -> list[tuple[int, str]]:
    return [(response.status_code, response.json()["code"]) for response, _ in probed]


# --- refused by every worker at once ---------------------------------------------------------


def test_a_revoked_key_is_refused_by_every_worker_at_once(
    service: Gunicorn, sink: OtlpSink, configuration: str
) -> None:
    owner = new_owner(service)
    key = new_key(service, owner)
    headers = key_headers(key["key"], "198.51.100.1")
    cache_on_every_worker(service, sink, headers, configuration)

    revoked = httpx.delete(
        f"{service.url}{API}/service-accounts/{owner.account_id}/keys/{key['id']}",
        headers=owner.headers,
    )
    assert revoked.status_code == 204, revoked.text

    probed = probe_every_worker(service, sink, headers)
    assert answers(probed) == [(401, "invalid_api_key")] * len(probed)


def test_an_inactive_owners_key_is_refused_by_every_worker_at_once(
    service: Gunicorn, sink: OtlpSink, configuration: str
) -> None:
    owner = new_owner(service)
    key = new_key(service, owner)
    headers = key_headers(key["key"], "198.51.100.2")
    cache_on_every_worker(service, sink, headers, configuration)

    token = httpx.post(
        f"{service.url}{API}/auth/token",
        data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
    )
    assert token.status_code == 200, token.text
    deactivated = httpx.patch(
        f"{service.url}{API}/users/{owner.id}",
        json={"is_active": False},
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
    )
    assert deactivated.status_code == 200, deactivated.text

    probed = probe_every_worker(service, sink, headers)
    assert answers(probed) == [(403, "inactive_user")] * len(probed)


def test_a_key_rotated_without_grace_is_refused_by_every_worker_at_once(
    service: Gunicorn, sink: OtlpSink, configuration: str
) -> None:
    owner = new_owner(service)
    key = new_key(service, owner)
    old_headers = key_headers(key["key"], "198.51.100.3")
    cache_on_every_worker(service, sink, old_headers, configuration)

    rotated = httpx.post(
        f"{service.url}{API}/service-accounts/{owner.account_id}/keys/{key['id']}/rotate",
        json={"grace_seconds": 0},
        headers=owner.headers,
    )
    assert rotated.status_code == 201, rotated.text

    probed = probe_every_worker(service, sink, old_headers)
    assert answers(probed) == [(401, "invalid_api_key")] * len(probed)
    new_headers = key_headers(rotated.json()["key"], "198.51.100.3")
    probed = probe_every_worker(service, sink, new_headers)
    assert {response.status_code for response, _ in probed} == {200}


# --- no key in any log line or span ----------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What one run of the service with keys wrote and exported, from start to shutdown."""

    owner: Owner
    logs: str
    access: dict[str, dict[str, Any]]  # access lines by request ID
    exported: str  # every span, printed
    spans: list[ExportedSpan]
    headers_keys: list[str]  # keys sent in X-API-Key: used, wrong, made up, rotated in
    used: list[httpx.Response]  # requests made with a good key
    refused: list[httpx.Response]
    pasted_key: str  # a key pasted into URLs instead


@pytest.fixture(scope="module")
def observed(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Observed:
    with (
        running_otlp_sink() as own_sink,
        running_gunicorn(
            database_url,
            tmp_path_factory.mktemp("observed"),
            workers=WORKERS,
            REDIS_URL=redis_server.url,
            GLASSHOUSE_CACHE__KEY_PREFIX=f"keys-{secrets.token_hex(4)}",
            **traced(own_sink),
        ) as service,
    ):
        owner = new_owner(service)
        key = new_key(service, owner)
        raw, key_id = key["key"], key["id"]
        address = "198.51.100.4"
        used = send(service, key_headers(raw, address), 3 * ROUND)
        assert {response.status_code for response in used} == {200}
        assert len({h.worker for h in handled(own_sink, used)}) == WORKERS

        wrong = f"gh_{key_id}_{secrets.token_urlsafe(32)}"
        unknown = f"gh_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
        refused = [
            *send(service, key_headers(wrong, address), ROUND),
            *send(service, key_headers(unknown, address), 2),
            # Where a key does not belong: as a bearer token, or beside one.
            httpx.get(f"{service.url}{ME}", headers={"Authorization": f"Bearer {raw}"}),
            httpx.get(f"{service.url}{ME}", headers={**owner.headers, "X-API-Key": raw}),
        ]
        assert all(400 <= r.status_code < 500 for r in refused), [r.text for r in refused]
        rotated = httpx.post(
            f"{service.url}{API}/service-accounts/{owner.account_id}/keys/{key_id}/rotate",
            json={"grace_seconds": 0},
            headers=owner.headers,
        )
        assert rotated.status_code == 201, rotated.text
        new_raw = rotated.json()["key"]
        assert send(service, key_headers(new_raw, address), 2)[0].status_code == 200
        refused += send(service, key_headers(raw, address), 1)
        assert refused[-1].status_code == 401

        pasted = new_key(service, owner)["key"]
        httpx.get(f"{service.url}{ME}", params={"api_key": pasted})
        httpx.get(f"{service.url}{API}/items/{pasted}", headers=key_headers(new_raw, address))
        # Everything written and exported, at shutdown.
        assert service.stop(signal.SIGTERM) == 0

    spans = own_sink.snapshot()
    return Observed(
        owner=owner,
        logs=service.logs(),
        access={
            line["request_id"]: line
            for line in service.log_lines()
            if line.get("logger") == "glasshouse.access"
        },
        exported="\n".join(repr(span) for span in spans),
        spans=spans,
        headers_keys=[raw, wrong, unknown, new_raw],
        used=used,
        refused=refused,
        pasted_key=pasted,
    )


def secret_of(key: str) -> str:
    return key.split("_", 2)[2]  # gh_<id>_<secret>; the secret may hold "_" too


def test_keys_reach_no_log_line_and_no_span(observed: Observed) -> None:
    for key in observed.headers_keys:
        assert secret_of(key) not in observed.logs  # the full key with it
        assert secret_of(key) not in observed.exported
    # The logs and spans searched are those of the requests made.
    for response in observed.used + observed.refused:
        assert observed.access[response.headers["x-request-id"]]["status"] == response.status_code
    assert {trace_id(r) for r in observed.used} <= {span.trace_id for span in observed.spans}


def test_a_keys_access_line_names_its_service_account_and_user(observed: Observed) -> None:
    for response in observed.used:
        line = observed.access[response.headers["x-request-id"]]
        assert line["service_account_id"] == observed.owner.account_id
        assert line["user_id"] == observed.owner.id


def test_a_key_pasted_into_a_url_reaches_no_log_line_and_no_span(observed: Observed) -> None:
    key_id = observed.pasted_key.split("_", 2)[1]
    assert f"gh_{key_id}_[redacted]" in observed.logs
    assert secret_of(observed.pasted_key) not in observed.logs
    assert secret_of(observed.pasted_key) not in observed.exported


# --- a stalled Redis path ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pods:
    a: Gunicorn  # where the owner revokes
    b: Gunicorn  # where the key is used, its Redis path stalled
    proxy_b: TcpProxy
    sink: OtlpSink  # pod B's traces
    configuration: str


@pytest.fixture(params=list(CONFIGURATIONS))
def pods(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[Pods]:
    """Two pods on one PostgreSQL and one Redis, each reaching Redis through a proxy of its
    own, as in tests/coherence_phases.py (pod A with one worker: it only revokes)."""
    prefix = f"keys-{secrets.token_hex(4)}"
    settings = CONFIGURATIONS[request.param]
    with (
        running_redis(tmp_path) as redis_server,
        running_proxy(redis_server.port) as proxy_a,
        running_proxy(redis_server.port) as proxy_b,
        running_otlp_sink() as pod_b_sink,
        running_gunicorn(
            database_url,
            tmp_path / "pod-a",
            workers=1,
            REDIS_URL=f"redis://127.0.0.1:{proxy_a.port}/0",
            GLASSHOUSE_CACHE__KEY_PREFIX=prefix,
            GLASSHOUSE_SERVER__DRAIN_SECONDS="0",
            **settings,
        ) as pod_a,
        running_gunicorn(
            database_url,
            tmp_path / "pod-b",
            workers=WORKERS,
            REDIS_URL=f"redis://127.0.0.1:{proxy_b.port}/0",
            GLASSHOUSE_CACHE__KEY_PREFIX=prefix,
            **traced(pod_b_sink, **settings),
        ) as pod_b,
    ):
        yield Pods(pod_a, pod_b, proxy_b, pod_b_sink, request.param)


@dataclass(frozen=True)
class Probe:
    response: httpx.Response
    sent: float  # seconds after the revocation was acknowledged
    answered: float


async def probe_for(url: str, headers: dict[str, str], acknowledged: float) -> list[Probe]:
    """Pod B asked in PROBE_LOOPS loops, on a new connection each time, until
    STALLED_PROBE_SECONDS after the acknowledgement (at most MAX_STALLED_PROBES times)."""
    limits = httpx.Limits(max_connections=PROBE_LOOPS, max_keepalive_connections=0)
    probes: list[Probe] = []

    async def loop(client: httpx.AsyncClient) -> None:
        while (sent := time.monotonic() - acknowledged) < STALLED_PROBE_SECONDS:
            if len(probes) >= MAX_STALLED_PROBES:
                return
            response = await client.get(ME, headers=headers)
            probes.append(Probe(response, sent, time.monotonic() - acknowledged))
            await asyncio.sleep(PROBE_PAUSE_SECONDS)

    async with httpx.AsyncClient(base_url=url, timeout=5, limits=limits) as client:
        await asyncio.gather(*(loop(client) for _ in range(PROBE_LOOPS)))
    return probes


async def probe_round(
    url: str, headers: dict[str, str], acknowledged: float, count: int
) -> list[Probe]:
    """Pod B asked ``count`` times at once, each on a new connection: while one worker is busy
    accepting, another takes the next."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient) -> Probe:
        sent = time.monotonic() - acknowledged
        response = await client.get(ME, headers=headers)
        return Probe(response, sent, time.monotonic() - acknowledged)

    async with httpx.AsyncClient(base_url=url, timeout=5, limits=limits) as client:
        return list(await asyncio.gather(*(one(client) for _ in range(count))))


def by_worker(sink: OtlpSink, probes: list[Probe]) -> dict[str, list[Probe]]:
    grouped: dict[str, list[Probe]] = defaultdict(list)
    for probe, how in zip(probes, handled(sink, [p.response for p in probes]), strict=True):
        grouped[how.worker].append(probe)
    return grouped


def test_a_pod_with_a_stalled_redis_path_refuses_a_revoked_key_within_1_s(pods: Pods) -> None:
    owner = new_owner(pods.a)
    key = new_key(pods.a, owner)
    headers = key_headers(key["key"], "198.51.100.5")
    cache_on_every_worker(pods.b, pods.sink, headers, pods.configuration)

    pods.proxy_b.set_mode(ProxyMode.stall)
    try:
        revoked = httpx.delete(
            f"{pods.a.url}{API}/service-accounts/{owner.account_id}/keys/{key['id']}",
            headers=owner.headers,
        )
        acknowledged = time.monotonic()
        assert revoked.status_code == 204, revoked.text
        probes = asyncio.run(probe_for(pods.b.url, headers, acknowledged))
        seen = by_worker(pods.sink, probes)
        # The kernel hands a new connection to whichever worker accepts first, which can be
        # the same one for the whole window: ask again until every worker has answered a probe
        # sent after the bound (from another address, under the failed-key limit).
        more_headers = key_headers(key["key"], "198.51.100.6")
        extra = 0
        while missing := WORKERS - sum(
            any(p.sent > STALE_BOUND_SECONDS for p in worker_probes)
            for worker_probes in seen.values()
        ):
            assert extra < MAX_EXTRA_PROBES, f"{missing} worker(s) never asked late: {seen}"
            round_probes = asyncio.run(
                probe_round(pods.b.url, more_headers, acknowledged, EXTRA_ROUND)
            )
            extra += EXTRA_ROUND
            for worker, worker_probes in by_worker(pods.sink, round_probes).items():
                seen.setdefault(worker, []).extend(worker_probes)
    finally:
        pods.proxy_b.set_mode(ProxyMode.forward)

    assert len(seen) == WORKERS, f"only one worker of pod B answered: {probes}"
    for worker, worker_probes in seen.items():
        timeline = [
            f"{p.response.status_code} sent {p.sent:.2f} s answered {p.answered:.2f} s"
            for p in worker_probes
        ]
        assert {p.response.status_code for p in worker_probes} <= {200, 401}, (worker, timeline)
        accepted = [p.answered for p in worker_probes if p.response.status_code == 200]
        assert max(accepted, default=0) <= STALE_BOUND_SECONDS, (worker, timeline)
        # Refused from then on, on this worker too: its stale answers ended.
        late = [p for p in worker_probes if p.sent > STALE_BOUND_SECONDS]
        assert late, (worker, timeline)
        assert {p.response.json()["code"] for p in late} == {"invalid_api_key"}, timeline
