"""Route classes: cross-cutting route behaviour through FastAPI's public extension point (a
router's ``route_class``). Domains opt in per router."""

from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope


class NumericIdRoute(APIRoute):
    """A route whose ``*_id`` path parameters only match segments that start like a number, so
    that a static path beside it (``/items/exports`` next to ``/items/{item_id}``) is never
    taken for an id: another method on it answers 405, not "item_id is not an integer".
    Numbers out of range (``0``, ``-1``, ``1.5``) still reach the route and its 422."""

    @staticmethod
    def accepts(path_params: dict[str, Any]) -> bool:
        return all(
            str(value)[:1] in "+-0123456789"
            for name, value in path_params.items()
            if name.endswith("_id")
        )

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and not self.accepts(child_scope.get("path_params", {})):
            return Match.NONE, {}
        return match, child_scope
