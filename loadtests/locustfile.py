# mypy: allow-subclassing-any, disable-error-code="untyped-decorator"
"""Glasshouse under load: `locust -f loadtests/locustfile.py` from the repository root.

What users do is in journeys.py, the load shapes in shapes.py (picked by `LOCUST_SHAPE`), the
pass/fail limits in thresholds.py. `loadtests/run.py` boots the whole service and runs this
headless; loadtests/README.md shows distributed runs and Kubernetes.
"""

from loadtests import thresholds  # noqa: F401  (registers the limits and the exit code)
from loadtests.journeys import GlasshouseUser
from loadtests.shapes import selected_shapes

__all__ = ["GlasshouseUser"]

# locust runs the LoadTestShape classes it finds in this module: expose only the chosen ones.
globals().update(selected_shapes())
