"""pytest-celery's Docker-based setups: they need a Docker engine, which these machines lack.

The suite runs on real-Redis fixtures and real worker processes instead (see conftest.py).
Where an engine answers, this module is where Docker-based tests go (pytest-celery is a dev
dependency for them); elsewhere it is skipped, saying why, never silently.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _docker_engine() -> str | None:
    """None if a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if probe.returncode != 0:
        return "docker client present but no engine answers (`docker info` failed)"
    return None


WHY_NOT = _docker_engine()
pytestmark = pytest.mark.skipif(
    WHY_NOT is not None, reason=f"pytest-celery's Docker setups need a Docker engine: {WHY_NOT}"
)


def test_pytest_celery_is_installed_for_docker_runs() -> None:
    import pytest_celery

    assert hasattr(pytest_celery, "CeleryTestSetup")
