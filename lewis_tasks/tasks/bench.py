"""Tasks of the bench area (filled in by its issue)."""
