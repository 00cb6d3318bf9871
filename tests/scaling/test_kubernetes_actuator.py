"""The kubernetes actuator with the official client against a loopback API server: the
requests it really sends (GET then PATCH of the scale subresource), refusals and timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.domain.scaling import ScalingDecision
from lewis_tasks.errors import ActuatorError
from lewis_tasks.infra.actuators import Kubernetes
from lewis_tasks.infra.config import load_settings
from tests.support.httpservers import ServerThread
from tests.support.kubeapi import TOKEN, FakeKube, kubeconfig

pytest.importorskip("kubernetes")
SCALE = "/apis/apps/v1/namespaces/lewis/deployments/lewis-worker-io/scale"


@pytest.fixture
def kube(tmp_path: Path, serve: ServerThread) -> tuple[FakeKube, Kubernetes]:
    fake = FakeKube(replicas={("lewis", "lewis-worker-io"): 1, ("lewis", "lewis-worker-cpu"): 1})
    server = serve.start(fake.app())
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(server.port))
    settings = load_settings(
        env={"LEWIS_SCALING_KUBECONFIG": str(path), "LEWIS_SCALING_KUBERNETES_TIMEOUT": "1"},
        cwd=tmp_path,
    )
    return fake, Kubernetes(settings.scaling)


def decision(queue: str, desired: int, current: int = 1) -> ScalingDecision:
    return ScalingDecision(
        queue, "up" if desired > current else "down", current, desired, desired, "test"
    )


def test_patches_the_scale_subresource_and_skips_a_patch_that_changes_nothing(
    kube: tuple[FakeKube, Kubernetes],
) -> None:
    fake, actuator = kube
    out = actuator.apply(decision("io", 3))
    assert out == {
        "applied": True,
        "deployment": "lewis/lewis-worker-io",
        "replicas_before": 1,
        "replicas": 3,
    }
    assert fake.replicas[("lewis", "lewis-worker-io")] == 3
    get, patch = fake.requests
    assert (get["method"], get["path"], get["body"]) == ("GET", SCALE, None)
    assert (patch["method"], patch["path"]) == ("PATCH", SCALE)
    assert patch["body"] == {"spec": {"replicas": 3}}
    assert patch["content_type"] in (
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    )
    assert {r["authorization"] for r in fake.requests} == {f"Bearer {TOKEN}"}
    # the same count again: read, no patch
    fake.requests.clear()
    assert actuator.apply(decision("io", 3, current=3))["applied"] is False
    assert [r["method"] for r in fake.requests] == ["GET"]
    # cpu has its own deployment
    actuator.apply(decision("cpu", 2))
    assert fake.replicas[("lewis", "lewis-worker-cpu")] == 2


def test_a_refusal_or_a_timeout_is_an_actuator_error(kube: tuple[FakeKube, Kubernetes]) -> None:
    fake, actuator = kube
    fake.refuse = True
    with pytest.raises(ActuatorError, match=r"lewis/lewis-worker-io: HTTP 403 Forbidden"):
        actuator.apply(decision("io", 2))
    fake.refuse, fake.delay = False, 3.0
    with pytest.raises(ActuatorError, match=r"lewis-worker-io: .*(Timeout|timed out)"):
        actuator.apply(decision("io", 2))
    fake.delay = 0.0
    assert actuator.apply(decision("io", 2))["replicas"] == 2  # the next tick succeeds


def test_no_configuration_is_an_actuator_error(tmp_path: Path) -> None:
    settings = load_settings(
        env={"LEWIS_SCALING_KUBECONFIG": str(tmp_path / "missing")}, cwd=tmp_path
    )
    with pytest.raises(ActuatorError, match="kubernetes: no configuration"):
        Kubernetes(settings.scaling).apply(decision("io", 2))
    in_cluster: Any = load_settings(env={}, cwd=tmp_path).scaling  # not in a pod here
    with pytest.raises(ActuatorError, match="kubernetes: no configuration"):
        Kubernetes(in_cluster).apply(decision("io", 2))
