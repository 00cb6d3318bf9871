"""Worker profiles (io, cpu, control) and their launcher: ``python -m workers io``.

The profiles live in ``lewis_tasks.infra.profiles``; this package is the thin top-level entry.
"""

from lewis_tasks.infra.profiles import (
    PROFILES,
    beat_argv,
    flower_argv,
    flower_env,
    worker_argv,
    worker_options,
)

__all__ = ["PROFILES", "worker_argv", "worker_options", "beat_argv", "flower_argv", "flower_env"]
