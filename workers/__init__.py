"""Worker profiles (io, cpu, control) and their launcher: ``python -m workers io``."""

from .profiles import PROFILES, beat_argv, flower_argv, worker_argv, worker_options

__all__ = ["PROFILES", "worker_argv", "worker_options", "beat_argv", "flower_argv"]
