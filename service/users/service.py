"""User accounts: creation, profile changes, roles. Functions own their transaction."""

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.metrics import SESSIONS_REVOKED
from service.auth.security import PasswordHasher
from service.auth.sessions import revoke_all_sessions
from service.cache.scoped import UserScopedCache
from service.cache.setup import Caches
from service.errors import EmailTakenError, LastAdminError, NotFoundError, WrongPasswordError
from service.events.service import forget_owner
from service.schemas import PageParams
from service.settings import AuthSettings
from service.users.models import Role, User
from service.users.schemas import PasswordChange, UserAdminUpdate, UserCreate, UserUpdateMe

log = structlog.get_logger(__name__)


async def create_user(
    *, session: AsyncSession, passwords: PasswordHasher, data: UserCreate, role: Role = Role.user
) -> User:
    # Hashed before the first query: no pooled connection waits while argon2 runs.
    hashed_password = await passwords.hash(data.password)
    if await get_by_email(session=session, email=data.email) is not None:
        raise EmailTakenError()
    user = User(
        email=data.email,
        full_name=data.full_name,
        hashed_password=hashed_password,
        role=role,
        is_active=True,
    )
    session.add(user)
    await _commit_unique_email(session)
    log.info("user_created", user_id=user.id, role=user.role)
    return user


async def welcome(*, user_id: int) -> None:
    """Runs after the register response is sent (FastAPI's BackgroundTasks), in the request's
    trace and log context: where a real service sends its welcome email. BackgroundTasks suit
    short work whose loss is harmless; work that must survive the worker belongs on a queue."""
    log.info("welcome_notification_sent", user_id=user_id)


async def get_by_email(*, session: AsyncSession, email: str) -> User | None:
    result = await session.scalars(select(User).where(User.email == email.lower()))
    return result.one_or_none()


async def get_user(*, session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError("No user with that id.")
    return user


async def list_users(*, session: AsyncSession, page: PageParams) -> tuple[list[User], int]:
    total = await session.scalar(select(func.count()).select_from(User))
    users = await session.scalars(
        select(User).order_by(User.id).limit(page.limit).offset(page.offset)
    )
    return list(users), total or 0


async def update_me(*, session: AsyncSession, user: User, data: UserUpdateMe) -> User:
    changes = data.model_dump(exclude_unset=True)
    new_email = changes.get("email")
    if (
        new_email
        and new_email != user.email
        and await get_by_email(session=session, email=new_email)
    ):
        raise EmailTakenError()
    for field, value in changes.items():
        setattr(user, field, value)
    await _commit_unique_email(session)
    return user


async def change_password(
    *,
    session: AsyncSession,
    passwords: PasswordHasher,
    auth_cache: UserScopedCache,
    user: User,
    data: PasswordChange,
) -> None:
    # Ends the read that loaded `user`: no pooled connection waits while argon2 runs.
    await session.commit()
    valid, _ = await passwords.verify_and_update(data.current_password, user.hashed_password)
    if not valid:
        raise WrongPasswordError()
    user.hashed_password = await passwords.hash(data.new_password)
    # Whoever held the old password may hold tokens too: every session ends.
    revoked = await revoke_all_sessions(session=session, user_id=user.id, reason="password_changed")
    await session.commit()
    await auth_cache.invalidate(user.id)
    SESSIONS_REVOKED.labels(reason="password_changed").inc(revoked)
    log.info("password_changed", user_id=user.id)


async def admin_update(
    *, session: AsyncSession, auth_cache: UserScopedCache, user: User, data: UserAdminUpdate
) -> User:
    changes = data.model_dump(exclude_unset=True)
    loses_admin = (changes.get("role", user.role) != Role.admin) or not changes.get(
        "is_active", user.is_active
    )
    if user.role == Role.admin and user.is_active and loses_admin:
        await _refuse_removing_last_admin(session=session, user=user)
    for field, value in changes.items():
        setattr(user, field, value)
    revoked = 0
    if changes.get("is_active") is False:
        revoked = await revoke_all_sessions(session=session, user_id=user.id, reason="deactivated")
    await session.commit()
    # Role and active state are part of every cached session check of this user.
    await auth_cache.invalidate(user.id)
    SESSIONS_REVOKED.labels(reason="deactivated").inc(revoked)
    log.info("user_updated_by_admin", user_id=user.id, fields=sorted(changes))
    return user


async def delete_user(*, session: AsyncSession, caches: Caches, user: User) -> None:
    if user.role == Role.admin and user.is_active:
        await _refuse_removing_last_admin(session=session, user=user)
    await session.delete(user)
    await forget_owner(session=session, owner_id=user.id)
    await session.commit()
    await caches.invalidate_user(user.id)
    log.info("user_deleted", user_id=user.id)


async def ensure_bootstrap_admin(
    session: AsyncSession,
    passwords: PasswordHasher,
    settings: AuthSettings,
    auth_cache: UserScopedCache,
) -> None:
    """Create the configured admin, or promote and reactivate an existing account."""
    if not settings.bootstrap_admin_email:
        return
    email = settings.bootstrap_admin_email.lower()
    user = await get_by_email(session=session, email=email)
    if user is None:
        if settings.bootstrap_admin_password is None:
            raise ValueError(
                "GLASSHOUSE_AUTH__BOOTSTRAP_ADMIN_PASSWORD is required to create "
                "the bootstrap admin account"
            )
        password = settings.bootstrap_admin_password.get_secret_value()
        session.add(
            User(
                email=email,
                hashed_password=await passwords.hash(password),
                role=Role.admin,
                is_active=True,
            )
        )
    elif user.role != Role.admin or not user.is_active:
        user.role = Role.admin
        user.is_active = True
    else:
        return
    try:
        await session.commit()
    except IntegrityError:
        # Another worker bootstrapped the same admin at the same moment.
        await session.rollback()
        return
    if user is not None:
        await auth_cache.invalidate(user.id)
    log.info("bootstrap_admin_ensured")


async def _refuse_removing_last_admin(*, session: AsyncSession, user: User) -> None:
    other_admins = await session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.admin, User.is_active.is_(True), User.id != user.id)
    )
    if not other_admins:
        raise LastAdminError()


async def _commit_unique_email(session: AsyncSession) -> None:
    # The pre-check gives a clean answer; this catches the race between two registrations.
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise EmailTakenError() from exc
