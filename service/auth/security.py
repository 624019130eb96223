"""Password hashing and token encoding: the only code that touches argon2 or PyJWT."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from service.auth.metrics import PASSWORD_CHECKS_REFUSED
from service.errors import InvalidTokenError, ServerBusyError
from service.settings import AuthSettings

T = TypeVar("T")
# Whether this request (task) holds a password-check slot already.
_holding_slot: ContextVar[bool] = ContextVar("holding_password_check_slot", default=False)


class PasswordHasher:
    """argon2id via pwdlib; hashing runs in a thread because it is deliberately slow.

    At most ``max_concurrent_password_checks`` run at once in a worker: each holds argon2's
    memory and a core, and a login burst queued behind them would slow every other request.
    One more is refused at once with 503 and Retry-After."""

    def __init__(self, settings: AuthSettings) -> None:
        self.max_running = settings.max_concurrent_password_checks
        self.running = 0
        self.executor = ThreadPoolExecutor(
            max_workers=self.max_running,
            thread_name_prefix="password-hashing",
            initializer=_yield_cpu_to_requests,
        )
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost=settings.argon2_memory_cost_kib,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        # Verifying against this when the email is unknown keeps login time the same for
        # existing and missing accounts, so timing does not reveal which emails are registered.
        self._decoy_hash = self._hash.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await self._run(self._hash.hash, password)

    async def verify_and_update(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """Returns (valid, new_hash); new_hash is set when the stored hash uses old parameters."""
        if hashed is None:
            await self._run(self._hash.verify, password, self._decoy_hash)
            return False, None
        return await self._run(self._hash.verify_and_update, password, hashed)

    @contextmanager
    def capacity(self) -> Iterator[None]:
        """Holds one of the worker's password-check slots, or refuses at once (503). A login
        takes it before anything else, so a burst is refused before it queries anything;
        hash() and verify_and_update() take one themselves unless the request holds one."""
        if _holding_slot.get():
            yield
            return
        if self.running >= self.max_running:
            PASSWORD_CHECKS_REFUSED.inc()
            raise ServerBusyError("Too many password checks at once; retry shortly.")
        self.running += 1
        token = _holding_slot.set(True)
        try:
            yield
        finally:
            _holding_slot.reset(token)
            self.running -= 1

    async def _run(self, work: Callable[..., T], *args: str) -> T:
        with self.capacity():
            return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _yield_cpu_to_requests() -> None:
    """Hashing threads run at a lower priority than the event loop, so a login burst slows
    the logins, not every other request. On Linux a thread's nice value is its own, and
    argon2's lane threads inherit it; elsewhere it would apply to the whole process."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: str
    token_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    expires_in: int


class AccessTokenCodec:
    """Short-lived signed JWTs. The algorithm is pinned on decode, so `alg: none` and
    algorithm-confusion tokens are refused."""

    _required_claims = ("exp", "iat", "sub", "jti", "sid", "iss")

    # Verified tokens, so a client's repeated requests skip the signature check. Only an
    # identical token string hits; its expiry is still checked on every use.
    _VERIFIED_CAPACITY = 4096

    def __init__(self, settings: AuthSettings) -> None:
        self._secret = settings.jwt_secret.get_secret_value()
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._ttl = settings.access_token_ttl_seconds
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

    def issue(self, *, user_id: int, session_id: str) -> IssuedAccessToken:
        now = datetime.now(UTC)
        claims = {
            "iss": self._issuer,
            "sub": str(user_id),
            "sid": session_id,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + timedelta(seconds=self._ttl),
        }
        token = jwt.encode(claims, self._secret, algorithm=self._algorithm)
        return IssuedAccessToken(token=token, expires_in=self._ttl)

    def decode(self, token: str) -> AccessClaims:
        claims = self._verified.get(token)
        if claims is not None:
            if claims.expires_at > datetime.now(UTC):
                self._verified.move_to_end(token)
                return claims
            del self._verified[token]
            raise InvalidTokenError()
        claims = self._verify(token)
        self._verified[token] = claims
        if len(self._verified) > self._VERIFIED_CAPACITY:
            self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                options={"require": list(self._required_claims)},
            )
            return AccessClaims(
                user_id=int(claims["sub"]),
                session_id=str(claims["sid"]),
                token_id=str(claims["jti"]),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidTokenError() from exc


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# API keys: gh_<key id>_<secret>. The prefix makes a leaked key recognisable to secret
# scanners; the id finds the stored key; only the secret's SHA-256 is stored. A fast hash is
# safe here, unlike for passwords: 256 random bits cannot be guessed from their hash.
API_KEY_PREFIX = "gh_"
_KEY_ID_LENGTH = 16
_KEY_SECRET_LENGTH = 43  # token_urlsafe(32)
_KEY_LENGTH = len(API_KEY_PREFIX) + _KEY_ID_LENGTH + 1 + _KEY_SECRET_LENGTH
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ApiKeyParts:
    key_id: str
    secret: str


def new_api_key() -> tuple[str, ApiKeyParts]:
    parts = ApiKeyParts(
        key_id=secrets.token_hex(_KEY_ID_LENGTH // 2), secret=secrets.token_urlsafe(32)
    )
    return f"{API_KEY_PREFIX}{parts.key_id}_{parts.secret}", parts


def parse_api_key(raw: str) -> ApiKeyParts | None:
    """The key's parts, or None when it is not shaped like a key (nothing is looked up)."""
    if len(raw) != _KEY_LENGTH or not raw.startswith(API_KEY_PREFIX):
        return None
    key_id = raw[len(API_KEY_PREFIX) : len(API_KEY_PREFIX) + _KEY_ID_LENGTH]
    separator, secret = raw[len(API_KEY_PREFIX) + _KEY_ID_LENGTH], raw[-_KEY_SECRET_LENGTH:]
    if separator != "_" or not _HEX.issuperset(key_id):
        return None
    return ApiKeyParts(key_id=key_id, secret=secret)


def hash_api_key_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key_secret(secret), stored_hash)
