"""Single-use tickets for event streams. A browser's EventSource cannot send an Authorization
header, and an access token in a URL ends up in access logs and browser history; a ticket is
short-lived, used once, and stands for the login session that asked for it (so a session
revoked since is refused)."""

import hashlib
import secrets

import orjson

from service.auth.principal import Principal
from service.cache.resilient import Cache
from service.errors import AppError, InvalidTokenError


class TicketsUnavailableError(AppError):
    status = 503
    code = "tickets_unavailable"
    title = "Stream tickets unavailable"


class StreamTickets:
    def __init__(self, store: Cache, ttl_seconds: int) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds

    def _key(self, ticket: str) -> str:
        # Only a hash is stored: whoever reads Redis cannot use a ticket.
        digest = hashlib.sha256(ticket.encode()).hexdigest()
        return f"{self.store.settings.key_prefix}:stream-ticket:{digest}"

    async def issue(self, principal: Principal) -> str:
        if principal.session_id is None:
            raise InvalidTokenError("Stream tickets are issued to login sessions.")
        ticket = "st_" + secrets.token_urlsafe(32)
        value = orjson.dumps({"user_id": principal.id, "session_id": principal.session_id})
        if not await self.store.put(self._key(ticket), value, self.ttl_seconds):
            raise TicketsUnavailableError("Tickets cannot be issued right now; retry shortly.")
        return ticket

    async def redeem(self, ticket: str) -> tuple[int, str]:
        """(user id, login session id); the ticket is gone after this."""
        value = await self.store.take(self._key(ticket))
        if value is None:
            raise InvalidTokenError("The stream ticket is unknown, used or expired.")
        claims = orjson.loads(value)
        return int(claims["user_id"]), str(claims["session_id"])
