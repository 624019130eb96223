"""The item domain's business metrics (HTTP, cache and database metrics are the service's own,
in service/observability/metrics.py)."""

from prometheus_client import Counter

ITEMS_CREATED = Counter("glasshouse_items_created_total", "Items created.")
ITEMS_DELETED = Counter("glasshouse_items_deleted_total", "Items deleted.")
