"""Thin Celery tasks: validate input, call domain, persist, return a small JSON result."""
