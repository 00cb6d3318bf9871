"""The one error tree of LEWIS tasks.

::

    LewisError
     ├── ConfigError        a setting is missing, unknown, of the wrong type or out of range
     ├── InvalidInput       a request is malformed or over a cap; never retried
     │    └── OutOfScope    a target resolves outside the operator's allowlist
     ├── TransientError     the network or a service hiccupped; retried with backoff
     │    ├── BrokerUnavailable
     │    └── ActuatorError  a scaling actuator could not act (the next decision retries)
     ├── StorageError       the database refused or lost a write
     │    ├── DatabaseUnavailable  (also a TransientError) no connection for now: too many
     │    │                         clients, a server starting up or shutting down, the pool
     │    │                         exhausted, a connection lost
     │    └── DatabaseConflict     (also a TransientError) the transaction lost a race: a
     │                              serialization failure, a deadlock, a lock wait timed out,
     │                              SQLite's "database is locked"
     └── RedeliveryLimitExceeded  a task kept killing its worker; failed instead of looping

Every message is meant for a person: it names the bad key, token or cap.
"""

from __future__ import annotations


class LewisError(Exception):
    """Root of every error LEWIS raises on purpose."""


class ConfigError(LewisError):
    """A setting is unknown, of the wrong type, out of range, or its file unreadable."""


class InvalidInput(LewisError):
    """The caller's request cannot be run as given. Retrying will not help."""


class OutOfScope(InvalidInput):
    """A target lies (or resolves) outside the configured scope allowlist."""


class TransientError(LewisError):
    """A passing failure of the network or a service; worth retrying with backoff."""


class BrokerUnavailable(TransientError):
    """The Redis broker did not answer."""


class ActuatorError(TransientError):
    """A scaling actuator failed: a process that won't start, an API that refused or timed out."""


class StorageError(LewisError):
    """The database refused or lost a write."""


class DatabaseUnavailable(StorageError, TransientError):
    """The database had no connection for us now ("too many clients", starting up, the pool
    exhausted): retried with backoff like any passing failure, not a failed scan."""


class DatabaseConflict(StorageError, TransientError):
    """The transaction lost a race (serialization failure, deadlock, a lock wait that timed
    out, SQLite's "database is locked"): run again from the start, it will likely pass."""


class RedeliveryLimitExceeded(LewisError):
    """A task was delivered more times than the cap: it keeps killing its worker."""


__all__ = [
    "LewisError",
    "ConfigError",
    "InvalidInput",
    "ActuatorError",
    "OutOfScope",
    "TransientError",
    "BrokerUnavailable",
    "StorageError",
    "DatabaseUnavailable",
    "DatabaseConflict",
    "RedeliveryLimitExceeded",
]
