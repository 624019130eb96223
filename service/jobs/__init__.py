"""Background jobs: a row per job (state, progress, result), run by a taskiq worker."""
