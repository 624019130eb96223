"""Who is making the request, as the rest of the service needs to know it: cheap to cache,
and enough for every authorization decision."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.users.models import Role


@dataclass(frozen=True, slots=True)
class Principal:
    id: int
    role: Role
    session_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin

    def dumps(self) -> bytes:
        return orjson.dumps({"id": self.id, "role": self.role.value, "sid": self.session_id})

    @classmethod
    def loads(cls, raw: bytes) -> Principal:
        data = orjson.loads(raw)
        return cls(id=int(data["id"]), role=Role(data["role"]), session_id=str(data["sid"]))
