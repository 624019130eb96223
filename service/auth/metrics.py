"""The auth domain's business metrics: logins, sessions, and what protects them."""

from prometheus_client import Counter

LOGIN_OUTCOMES = ("success", "invalid_credentials", "inactive", "rate_limited")
LOGIN_ATTEMPTS = Counter(
    "glasshouse_login_attempts_total", "Login attempts by outcome.", ["outcome"]
)
TOKENS_REFRESHED = Counter("glasshouse_tokens_refreshed_total", "Refresh-token rotations.")
REVOCATION_REASONS = ("logout", "refresh_reuse", "password_changed", "deactivated")
SESSIONS_REVOKED = Counter(
    "glasshouse_sessions_revoked_total",
    "Login sessions revoked (their access and refresh tokens with them), by reason.",
    ["reason"],
)
RATE_LIMITS = ("login_client", "login_account", "login_address", "api_key_address")
RATE_LIMITED = Counter(
    "glasshouse_rate_limited_total", "Requests refused by a rate limit, by limit.", ["limit"]
)
RATE_LIMIT_FALLBACKS = Counter(
    "glasshouse_rate_limit_fallbacks_total",
    "Login and API-key attempts counted by the worker alone because Redis was unavailable.",
)
AUTH_METHODS = ("session", "api_key")
AUTHENTICATED_REQUESTS = Counter(
    "glasshouse_authenticated_requests_total",
    "Requests that authenticated, by method: a login session's access token or an API key.",
    ["method"],
)
API_KEY_FAILURE_REASONS = ("malformed", "unknown", "wrong_secret", "expired", "revoked", "inactive")
API_KEY_FAILURES = Counter(
    "glasshouse_api_key_failures_total",
    "API-key checks that failed (401 or 403), by reason.",
    ["reason"],
)
PASSWORD_CHECKS_REFUSED = Counter(
    "glasshouse_password_checks_refused_total",
    "Password hashes and checks refused (503) because the worker was running its maximum.",
)

# Every outcome, reason and limit exists at 0 from the start: dashboards and alerts see a
# series (and a rate of 0) before the first event, instead of no data.
for _outcome in LOGIN_OUTCOMES:
    LOGIN_ATTEMPTS.labels(outcome=_outcome)
for _reason in REVOCATION_REASONS:
    SESSIONS_REVOKED.labels(reason=_reason)
for _method in AUTH_METHODS:
    AUTHENTICATED_REQUESTS.labels(method=_method)
for _failure in API_KEY_FAILURE_REASONS:
    API_KEY_FAILURES.labels(reason=_failure)
for _limit in RATE_LIMITS:
    RATE_LIMITED.labels(limit=_limit)
