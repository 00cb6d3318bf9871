"""deploy/kubernetes/: a grace period that fits the warm drain, real commands, the beat
single, RBAC on the scale subresource of exactly the Deployments the actuator names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lewis_tasks.cli import cli
from lewis_tasks.infra.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs() if d["kind"] == "Deployment"}


def test_worker_pods_drain_within_their_grace_period(tmp_path: Path) -> None:
    s = load_settings(env={}, cwd=tmp_path)
    need = s.tasks.time_limit + s.workers.shutdown_timeout
    for name in ("lewis-worker-io", "lewis-worker-cpu"):
        spec = deployments()[name]["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > need
        container = spec["containers"][0]
        assert container["command"][:2] == ["lewis", "worker"]
        assert container["command"][2] in cli.commands["worker"].params[0].type.choices  # type: ignore[attr-defined]
        pre = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert 'lewis drain --worker "$(hostname)"' in pre
        timeout = float(pre.split("--timeout")[1].split()[0].strip('"'))
        assert need < timeout < spec["terminationGracePeriodSeconds"]


def test_the_actuator_targets_what_the_manifests_define_and_rbac_allows(tmp_path: Path) -> None:
    s = load_settings(env={}, cwd=tmp_path).scaling
    names = {s.kubernetes_io_deployment, s.kubernetes_cpu_deployment}
    assert names <= set(deployments())
    role = next(d for d in docs() if d["kind"] == "Role")
    (rule,) = role["rules"]
    assert rule["resources"] == ["deployments/scale"] and set(rule["verbs"]) == {"get", "patch"}
    assert set(rule["resourceNames"]) == names
    control = deployments()["lewis-worker-control"]["spec"]["template"]["spec"]
    assert control["serviceAccountName"] == "lewis-scaler"
    env = {e["name"]: e["value"] for e in control["containers"][0]["env"]}
    assert env["LEWIS_SCALING_ACTUATOR"] == "kubernetes"
    assert {
        env["LEWIS_SCALING_KUBERNETES_IO_DEPLOYMENT"],
        env["LEWIS_SCALING_KUBERNETES_CPU_DEPLOYMENT"],
    } == names
    assert env["LEWIS_SCALING_KUBERNETES_NAMESPACE"] == s.kubernetes_namespace
    load_settings(env=env, cwd=tmp_path)  # every variable is a real setting


def test_one_beat() -> None:
    beat = deployments()["lewis-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
