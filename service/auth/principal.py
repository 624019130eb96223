"""Who is making the request, as the rest of the service needs to know it: cheap to cache,
and enough for every authorization decision."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.auth.scopes import Scope
from service.users.models import Role


@dataclass(frozen=True, slots=True)
class Principal:
    """``id`` is always a user: an API key's requests act as the user who owns its service
    account, within the key's ``scopes`` (None: a login session, every scope)."""

    id: int
    role: Role
    session_id: str | None = None
    scopes: frozenset[Scope] | None = None
    service_account_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin

    def allows(self, scope: Scope) -> bool:
        return self.scopes is None or scope in self.scopes

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "role": self.role.value,
                "sid": self.session_id,
                "scopes": None if self.scopes is None else sorted(self.scopes),
                "said": self.service_account_id,
            }
        )

    @classmethod
    def loads(cls, raw: bytes) -> Principal:
        data = orjson.loads(raw)
        scopes = data.get("scopes")
        return cls(
            id=int(data["id"]),
            role=Role(data["role"]),
            session_id=data.get("sid"),
            scopes=None if scopes is None else frozenset(Scope(s) for s in scopes),
            service_account_id=data.get("said"),
        )
