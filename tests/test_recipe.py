"""docs/adding-a-domain.md, proven: a second domain assembled from the document's code blocks.

The blocks titled ``service/projects/*.py`` are written to a temporary directory that joins
``service.__path__`` for the session, so they import as ``service.projects`` without a file in
the repository's service/ tree. The document's migration runs against the test's scratch
database only, never through the production chain. The app gets the document's change to
service/api.py, applied in memory; its change to service/db/models.py is applied and imported
the same way. Nothing else in service/ is written or needs changing: no code in service/cache/,
service/observability/ or service/main.py knows the new domain exists.
"""

import ast
import importlib
import importlib.util
import inspect
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import MetaData, Table, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import service
import service.api
from service.cache.declared import DECLARED, CacheNamespace
from service.db.base import NAMING_CONVENTION
from service.db.migrate import alembic_config, migration_transaction
from service.db.models import Base
from service.lifespan import AppState
from service.main import create_app
from service.observability.logging import configure_logging, reset_logging
from service.settings import Settings
from service.users.models import Role, User
from tests.conftest import started
from tests.factories import API, Account, assert_problem, make_account

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding-a-domain.md"
# A block the test reads: ```python title="service/projects/models.py" (or ```diff title=...).
BLOCK = re.compile(r'^```(?P<kind>\w+) title="(?P<path>[^"]+)"\n(?P<body>.*?)^```$', re.M | re.S)
PACKAGE = "service/projects/"
VERSIONS = "service/db/migrations/versions/"
DOC_TESTS = "tests/test_projects.py"
REGISTRATION = "from service.projects.router import router as projects_router"
PROJECTS = f"{API}/projects"
ONE_PROJECT = "/api/v1/projects/{project_id}"


@dataclass(frozen=True)
class Block:
    kind: str
    body: str


def document_blocks() -> dict[str, Block]:
    blocks: dict[str, Block] = {}
    for match in BLOCK.finditer(DOC.read_text()):
        assert match["path"] not in blocks, f"{DOC.name} has two blocks for {match['path']}"
        blocks[match["path"]] = Block(match["kind"], match["body"])
    return blocks


def migration_path(blocks: dict[str, Block]) -> str:
    [path] = [path for path in blocks if path.startswith(VERSIONS)]
    return path


def applied(path: str, diff: str) -> str:
    """The repository's file with a ``diff`` block applied: hunks follow ``@@`` lines, and each
    hunk's old side (its `` `` and ``-`` lines) must appear exactly once in the file."""
    source = (REPO / path).read_text()
    for hunk in diff.split("@@\n")[1:]:
        lines = [line or " " for line in hunk.splitlines()]  # an editor may strip a blank's " "
        assert all(line[:1] in {" ", "-", "+"} for line in lines), hunk
        old = "".join(line[1:] + "\n" for line in lines if line[:1] in {" ", "-"})
        new = "".join(line[1:] + "\n" for line in lines if line[:1] in {" ", "+"})
        assert source.count(old) == 1, (
            f"{DOC.name}: its change to {path} no longer matches the file there:\n{old}"
        )
        source = source.replace(old, new)
    return source


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def declared(modules: list[ModuleType], kind: type) -> list[Any]:
    """What the modules define of ``kind``, once each (a module also holds what it imports)."""
    found = {
        id(value): value for m in modules for value in vars(m).values() if isinstance(value, kind)
    }
    return list(found.values())


@dataclass(frozen=True)
class Recipe:
    migration: ModuleType
    routers: tuple[APIRouter, ...]  # service/api.py's API_ROUTERS, with the document's change
    tables: list[Table]
    namespaces: list[CacheNamespace]
    metrics: list[MetricWrapperBase]
    db_models: ModuleType  # service/db/models.py, with the document's change
    doc_tests: ModuleType

    def attach(self) -> None:
        for namespace in self.namespaces:
            DECLARED[namespace.name] = namespace
        for metric in self.metrics:
            REGISTRY.register(metric)

    def detach(self) -> None:
        for namespace in self.namespaces:
            DECLARED.pop(namespace.name)
        for metric in self.metrics:
            REGISTRY.unregister(metric)


@pytest.fixture(scope="session")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recipe]:
    """The domain, imported once per session: a process can declare a Prometheus metric, a
    cache namespace and a mapped class only once. Outside the tests that use it, the domain is
    out of every registry the rest of the suite reads: its table is not in Base.metadata (whose
    tables the fixtures empty and the migration tests compare with the chain), its cache
    namespace not among those an account deletion invalidates, its counter not exported."""
    blocks = document_blocks()
    root = tmp_path_factory.mktemp("recipe")
    (root / "projects").mkdir()
    (root / "projects" / "__init__.py").write_text("")
    for path, block in blocks.items():
        if path.startswith(PACKAGE):
            (root / "projects" / path.removeprefix(PACKAGE)).write_text(block.body)
    sources = {
        "recipe_migration": blocks[migration_path(blocks)].body,
        "recipe_api": applied("service/api.py", blocks["service/api.py"].body),
        "recipe_db_models": applied("service/db/models.py", blocks["service/db/models.py"].body),
        "recipe_doc_tests": blocks[DOC_TESTS].body,
    }
    for name, source in sources.items():
        (root / f"{name}.py").write_text(source)

    tables_before = set(Base.metadata.tables)
    namespaces_before = set(DECLARED)
    service.__path__.append(str(root))
    importlib.invalidate_caches()
    try:
        modules = [
            importlib.import_module(f"service.projects.{Path(path).stem}")
            for path in blocks
            if path.startswith(PACKAGE)
        ]
        loaded = {name: load(name, root / f"{name}.py") for name in sources}
        tables = [Base.metadata.tables[name] for name in set(Base.metadata.tables) - tables_before]
        for table in tables:
            Base.metadata.remove(table)
        domain = Recipe(
            migration=loaded["recipe_migration"],
            routers=loaded["recipe_api"].API_ROUTERS,
            tables=tables,
            namespaces=[DECLARED[name] for name in set(DECLARED) - namespaces_before],
            metrics=declared(modules, MetricWrapperBase),
            db_models=loaded["recipe_db_models"],
            doc_tests=loaded["recipe_doc_tests"],
        )
        domain.detach()  # the import registered them; the tests that use it attach them
        yield domain
    finally:
        service.__path__.remove(str(root))
        for name in list(sys.modules):
            if name.startswith(("service.projects", "recipe_")):
                del sys.modules[name]
        if hasattr(service, "projects"):
            delattr(service, "projects")


async def run_migration(engine: AsyncEngine, step: Callable[[], None]) -> None:
    """One of the document migration's functions, on this database only, as Alembic would run
    it (its ``op`` bound to this connection), without touching the database's revision."""

    def run(connection: Connection) -> None:
        with Operations.context(MigrationContext.configure(connection)):
            step()

    async with migration_transaction(engine) as connection:
        await connection.run_sync(run)


@pytest.fixture
async def projects_table(recipe: Recipe, empty_database: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    await run_migration(empty_database, recipe.migration.upgrade)
    try:
        yield empty_database
    finally:
        await run_migration(empty_database, recipe.migration.downgrade)


@dataclass(frozen=True)
class ProjectsApp:
    client: httpx.AsyncClient
    state: AppState
    spans: InMemorySpanExporter


@pytest.fixture
async def projects(
    recipe: Recipe,
    settings: Settings,
    projects_table: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[ProjectsApp]:
    """The app as create_app builds it once service/api.py has the document's change."""
    monkeypatch.setattr(service.api, "API_ROUTERS", recipe.routers)
    recipe.attach()
    try:
        spans = InMemorySpanExporter()
        app = create_app(settings, span_exporter=spans)
        async with started(app) as (served, state):
            transport = httpx.ASGITransport(app=served)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield ProjectsApp(client, state, spans)
    finally:
        recipe.detach()


@pytest.fixture
def access_lines(tmp_path: Path) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Production logging (JSON) into a file; returns a reader of its access lines."""
    path = tmp_path / "service.log"
    with path.open("w") as stream:
        configure_logging(json=True, level="INFO", stream=stream, cache_loggers=False)

        def read() -> list[dict[str, Any]]:
            stream.flush()
            lines = [json.loads(line) for line in path.read_text().splitlines() if line]
            return [line for line in lines if line.get("logger") == "glasshouse.access"]

        try:
            yield read
        finally:
            reset_logging()
            logging.getLogger().handlers.clear()


async def create(client: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    response = await client.post(
        PROJECTS, json={"name": "Fern house", **fields}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    project: dict[str, Any] = response.json()
    return project


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the document ------------------------------------------------------------------------------


def api_routers(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "API_ROUTERS":
            assert isinstance(node.value, ast.Tuple)
            return [ast.unparse(element) for element in node.value.elts]
    raise AssertionError("service/api.py has no API_ROUTERS")


def test_the_document_changes_only_the_new_package_and_one_registration() -> None:
    blocks = document_blocks()
    package = {f"{PACKAGE}{name}.py" for name in ("models", "schemas", "metrics", "service")}
    package |= {f"{PACKAGE}dependencies.py", f"{PACKAGE}router.py"}
    outside = {"service/api.py", "service/db/models.py", migration_path(blocks), DOC_TESTS}
    assert set(blocks) == package | outside
    assert not [path for path in blocks if path.startswith(("service/cache/", "service/obs"))]
    assert "service/main.py" not in blocks
    assert {path: block.kind for path, block in blocks.items() if block.kind != "python"} == {
        "service/api.py": "diff",
        "service/db/models.py": "diff",
    }

    # service/api.py gains one import and one entry in API_ROUTERS, and nothing else.
    assert f"\n+{REGISTRATION}\n" in blocks["service/api.py"].body
    original = ast.parse((REPO / "service/api.py").read_text())
    changed = ast.parse(applied("service/api.py", blocks["service/api.py"].body))
    before = {ast.dump(node) for node in original.body}
    new = [ast.unparse(node) for node in changed.body if ast.dump(node) not in before]
    assert new[0] == REGISTRATION
    assert [name for name in api_routers(changed) if name != "projects_router"] == api_routers(
        original
    )
    assert len(new) == 2
    assert len(changed.body) == len(original.body) + 1


def test_the_production_migration_chain_has_no_projects_revision(recipe: Recipe) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    chain = {revision.revision for revision in script.walk_revisions()}
    assert recipe.migration.revision not in chain
    # Written against the chain as it is: its parent is today's head (a copy of an older
    # parent would give the user's project two heads).
    assert recipe.migration.down_revision == script.get_current_head()
    versions = REPO / VERSIONS
    for path in versions.glob("*.py"):
        assert not re.search(r"""["']projects["']""", path.read_text()), path.name


async def test_the_migration_builds_the_table_the_model_declares(
    recipe: Recipe, projects_table: AsyncEngine
) -> None:
    def diff(connection: Connection) -> list[Any]:
        metadata = MetaData(naming_convention=NAMING_CONVENTION)
        for table in [*Base.metadata.sorted_tables, *recipe.tables]:
            table.to_metadata(metadata)
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    assert [table.name for table in recipe.tables] == ["projects"]
    # Where Alembic's env.py finds the tables, for autogenerate and the migration tests.
    assert recipe.db_models.Project.__table__ is recipe.tables[0]
    assert "Project" in recipe.db_models.__all__
    async with projects_table.connect() as connection:
        assert await connection.run_sync(diff) == []


def test_the_recipe_is_lint_clean_and_strictly_typed(tmp_path: Path) -> None:
    """ruff and mypy --strict, with the project's configuration, on every file the document
    writes or changes, in a copy of the repository's service/ tree."""
    blocks = document_blocks()
    shutil.copytree(
        REPO / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "tests").mkdir()
    for name in ("__init__.py", "factories.py"):
        shutil.copy(REPO / "tests" / name, tmp_path / "tests" / name)
    (tmp_path / PACKAGE / "__init__.py").parent.mkdir()
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    for path, block in blocks.items():
        body = applied(path, block.body) if block.kind == "diff" else block.body
        (tmp_path / path).write_text(body)
    files = [str(tmp_path / path) for path in blocks]
    config = ["--config", str(REPO / "pyproject.toml")]

    def run(*command: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    run("ruff", "check", "--no-cache", *config, *files)
    run("ruff", "format", "--check", "--no-cache", *config, *files)
    # Silent: the rest of service/ is mypy's business elsewhere, not this document's.
    run(
        "mypy",
        "--config-file",
        str(REPO / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / ".mypy_cache"),
        "--follow-imports",
        "silent",
        *files,
    )


# --- the domain, through the API ---------------------------------------------------------------


async def test_the_owner_creates_reads_lists_updates_and_deletes(projects: ProjectsApp) -> None:
    client = projects.client
    alice = await make_account(client)
    created = await create(client, alice, description="Under glass")
    assert created["owner_id"] == alice.id
    assert (created["name"], created["description"]) == ("Fern house", "Under glass")
    path = f"{PROJECTS}/{created['id']}"
    assert (await client.get(path, headers=alice.headers)).json() == created
    second = await create(client, alice, name="Orchids")
    listing = (await client.get(PROJECTS, headers=alice.headers)).json()
    assert (listing["total"], [p["id"] for p in listing["items"]]) == (
        2,
        [second["id"], created["id"]],
    )

    changed = await client.patch(path, json={"description": None}, headers=alice.headers)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["description"]) == ("Fern house", None)
    assert_problem(
        await client.patch(path, json={"name": None}, headers=alice.headers),
        422,
        "validation_failed",
    )
    assert (await client.delete(path, headers=alice.headers)).status_code == 204
    assert_problem(await client.get(path, headers=alice.headers), 404, "not_found")
    assert (await client.get(PROJECTS, headers=alice.headers)).json()["total"] == 1


async def test_another_user_gets_404_and_an_admin_sees_all(projects: ProjectsApp) -> None:
    client = projects.client
    alice, bob, admin = [await make_account(client) for _ in range(3)]
    project = await create(client, alice)
    path = f"{PROJECTS}/{project['id']}"
    for response in (
        await client.get(path, headers=bob.headers),
        await client.patch(path, json={"name": "Mine now"}, headers=bob.headers),
        await client.delete(path, headers=bob.headers),
    ):
        assert_problem(response, 404, "not_found")
    assert (await client.get(PROJECTS, headers=bob.headers)).json()["total"] == 0
    assert (await client.get(path, headers=alice.headers)).json() == project

    await make_admin(projects, admin)
    assert (await client.get(path, headers=admin.headers)).json() == project
    assert (await client.get(PROJECTS, headers=admin.headers)).json()["total"] == 1
    renamed = await client.patch(path, json={"name": "Moderated"}, headers=admin.headers)
    assert renamed.status_code == 200, renamed.text
    # The admin's write invalidated the owner's cached answer.
    assert (await client.get(path, headers=alice.headers)).json()["name"] == "Moderated"


async def make_admin(projects: ProjectsApp, account: Account) -> None:
    """As an operator would: the row in SQL, then the user's cached session checks."""
    async with projects.state["sessionmaker"]() as session:
        await session.execute(update(User).where(User.id == account.id).values(role=Role.admin))
        await session.commit()
    await projects.state["caches"].auth.invalidate(account.id)


async def test_cached_reads_hit_until_a_write_invalidates_them(projects: ProjectsApp) -> None:
    client = projects.client
    alice = await make_account(client)
    project = await create(client, alice, name="Before")
    path = f"{PROJECTS}/{project['id']}"
    hits, misses = (
        sample("glasshouse_cache_requests_total", result="hit"),
        sample("glasshouse_cache_requests_total", result="miss"),
    )
    first = await client.get(path, headers=alice.headers)
    second = await client.get(path, headers=alice.headers)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.json() == second.json() == project
    assert first.headers["etag"] == second.headers["etag"]
    assert sample("glasshouse_cache_requests_total", result="hit") - hits == 1
    assert sample("glasshouse_cache_requests_total", result="miss") - misses == 1
    not_modified = await client.get(
        path, headers={**alice.headers, "If-None-Match": first.headers["etag"]}
    )
    assert not_modified.status_code == 304

    await client.patch(path, json={"name": "After"}, headers=alice.headers)
    fresh = await client.get(path, headers=alice.headers)
    assert (fresh.headers["x-cache"], fresh.json()["name"]) == ("MISS", "After")
    assert fresh.headers["etag"] != first.headers["etag"]

    listed = [await client.get(PROJECTS, headers=alice.headers) for _ in range(2)]
    assert [response.headers["x-cache"] for response in listed] == ["MISS", "HIT"]
    await create(client, alice, name="Second")
    after_create = await client.get(PROJECTS, headers=alice.headers)
    assert (after_create.headers["x-cache"], after_create.json()["total"]) == ("MISS", 2)
    await client.delete(path, headers=alice.headers)
    after_delete = await client.get(PROJECTS, headers=alice.headers)
    assert (after_delete.headers["x-cache"], after_delete.json()["total"]) == ("MISS", 1)


async def test_metrics_spans_and_access_lines_carry_its_route_templates(
    projects: ProjectsApp, access_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    client = projects.client
    series = {"handler": ONE_PROJECT, "method": "GET", "status": "2xx"}
    created_before = sample("glasshouse_projects_created_total")
    requests_before = sample("http_requests_total", **series)
    alice = await make_account(client)
    project = await create(client, alice)
    assert sample("glasshouse_projects_created_total") - created_before == 1

    projects.spans.clear()
    path = f"{PROJECTS}/{project['id']}"
    response = await client.get(path, headers=alice.headers)
    assert response.status_code == 200
    assert sample("http_requests_total", **series) - requests_before == 1
    # The template, never the path: one series for every project.
    assert path not in {labels.get("handler") for labels in sample_labels("http_requests_total")}

    [span] = [span for span in projects.spans.get_finished_spans() if span.kind.name == "SERVER"]
    assert span.name == f"GET {ONE_PROJECT}"
    assert span.attributes is not None
    assert span.attributes["http.route"] == ONE_PROJECT
    assert span.attributes["glasshouse.cache.result"] == "miss"
    line = access_lines()[-1]
    assert (line["route"], line["path"], line["status"]) == (ONE_PROJECT, path, 200)
    assert line["user_id"] == alice.id


def sample_labels(name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    ]


DOCUMENTED_TESTS = re.findall(r"^async def (test_\w+)", document_blocks()[DOC_TESTS].body, re.M)


@pytest.mark.parametrize("name", DOCUMENTED_TESTS)
async def test_the_documents_own_tests_pass(
    recipe: Recipe, projects: ProjectsApp, name: str
) -> None:
    test = getattr(recipe.doc_tests, name)
    assert list(inspect.signature(test).parameters) == ["client"]
    await test(projects.client)
