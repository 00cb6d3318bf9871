"""Tasks of the profile area (filled in by its issue)."""
