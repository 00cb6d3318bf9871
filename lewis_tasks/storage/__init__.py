"""Persistence: SQLAlchemy 2 tables and the repository functions that read and write them.

Storage reads no setting: it is handed an engine (built from the settings by
``infra/database.py``) or a Session.

``models`` (the tables) · ``db`` (``session_scope`` on an engine, transient errors) · ``rows``
(the one upsert) · ``scans``, ``targets``, ``vulns``, ``heartbeats``, ``http``, ``runs``,
``alerts``, ``scaling``, ``summary`` (repositories, each function taking a Session) ·
``migrate`` (Alembic on an engine, scripts shipped in ``migrations/``).
"""
