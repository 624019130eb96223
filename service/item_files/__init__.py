"""Items in and out as files: exports (csv, json) and imports, run as background jobs."""
