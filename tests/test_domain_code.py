"""The code a user copies stays plain: domain routers use dependencies and declared caching,
never the request state, hand-made sessions or the cache's own calls."""

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
ROUTERS = sorted(SERVICE.glob("*/router.py"))
# What the item reads were built from before caching was declared on the route.
FORBIDDEN_NAMES = {"state_of", "read_session", "ReadSession", "cache_result"}
# Cache calls belong to the cache layer (reads) and to the services (invalidation).
FORBIDDEN_CALLS = {"invalidate", "invalidate_user", "get_many", "set_many", "read", "write"}


@pytest.mark.parametrize("router", ROUTERS, ids=lambda path: path.parent.name)
def test_routers_take_dependencies_and_make_no_cache_calls(router: Path) -> None:
    tree = ast.parse(router.read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not names & FORBIDDEN_NAMES
    assert not calls & FORBIDDEN_CALLS


def test_the_item_reads_declare_their_caching() -> None:
    source = (SERVICE / "items" / "router.py").read_text()
    assert source.count("@cached(ITEMS_CACHE)") == 2
