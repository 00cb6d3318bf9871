"""Persistence: SQLAlchemy 2 tables and the repository functions that read and write them.

``models`` (the tables) · ``db`` (engines, ``session_scope``) · ``rows`` (the one upsert) ·
``scans``, ``targets``, ``vulns``, ``heartbeats``, ``http``, ``runs`` (repositories, each
function taking a Session) · ``migrate`` (Alembic, scripts shipped in ``migrations/``).
"""
