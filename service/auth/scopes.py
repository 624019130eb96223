"""What an API key may do: the scopes it was given, and never more than its owner. A login
session may do everything its user may. Routes without a scope are for login sessions only."""

from enum import StrEnum


class Scope(StrEnum):
    items_read = "items:read"
    items_write = "items:write"
    profile_read = "profile:read"
    # Admin operations: needs an admin owner as well as the scope.
    admin = "admin"
