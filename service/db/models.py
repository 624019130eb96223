"""Imports every table so that Base.metadata is complete (for Alembic and tests)."""

from service.auth.models import AuthSession, RefreshToken
from service.db.base import Base
from service.events.models import EventSequence, ItemEvent
from service.items.models import Item
from service.jobs.models import Job
from service.service_accounts.models import ApiKey, ServiceAccount
from service.users.models import User

__all__ = [
    "ApiKey",
    "AuthSession",
    "Base",
    "EventSequence",
    "Item",
    "ItemEvent",
    "Job",
    "RefreshToken",
    "ServiceAccount",
    "User",
]
