"""Tasks of the http area (filled in by its issue)."""
