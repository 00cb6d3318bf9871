"""Tasks of the scan area (filled in by its issue)."""
