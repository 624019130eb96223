"""Load tests (locust), fault drills under load, and API fuzzing (schemathesis): see README.md.

The locust modules (locustfile, journeys, shapes, thresholds) import only locust and the
standard library: they run in locust's own tool environment, never in the app's."""
