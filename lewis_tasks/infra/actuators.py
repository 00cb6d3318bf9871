"""Scaling actuators: one interface, four ways to make a decision so (``scaling.actuator``).

* ``dryrun`` records only;
* ``local`` hands the count to the ``lewis up`` supervisor on this host through Redis
  (:data:`DESIRED_KEY`); the supervisor starts and drains real worker processes
  (infra/local_pool.py) and reports back under :data:`LOCAL_KEY`;
* ``celery`` moves consumers between running workers (``add_consumer``/``cancel_consumer``)
  and grows or shrinks their pools on the vertical advice (``pool_grow``/``pool_shrink``);
* ``kubernetes`` patches the scale subresource of the queue's Deployment.

Every actuator sets an absolute count, so applying the same decision twice is harmless and a
failed one is simply retried by the next decision. A failure is an :class:`ActuatorError`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

import redis
from celery import Celery

from ..domain.fleet import WorkerRecord
from ..domain.scaling import GROW, SHRINK, ScalingDecision
from ..errors import ActuatorError
from .config import ScalingSettings

DESIRED_KEY = "lewis:scaling:desired:{queue}"  # JSON {desired, at}: what the supervisor runs
LOCAL_KEY = "lewis:scaling:local"  # JSON the supervisor writes every poll (with a TTL)
LOCAL_TTL = 10.0  # seconds: a supervisor silent this long is gone


class Actuator(ABC):
    name: str = ""

    @abstractmethod
    def apply(self, decision: ScalingDecision) -> dict[str, Any]:
        """Make ``decision.desired`` so; what was done, or ActuatorError."""


class DryRun(Actuator):
    name = "dryrun"

    def apply(self, decision: ScalingDecision) -> dict[str, Any]:
        return {"applied": False, "would_set": decision.desired}


# --- local: the lewis up supervisor ----------------------------------------------------------


def read_local(client: redis.Redis) -> dict[str, Any] | None:
    """The supervisor's last report ({pid, at, queues: {q: {running, draining, error}}})."""
    raw = client.get(LOCAL_KEY)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def write_desired(client: redis.Redis, queue: str, desired: int) -> None:
    client.set(DESIRED_KEY.format(queue=queue), json.dumps({"desired": desired, "at": time.time()}))


def read_desired(client: redis.Redis, queue: str) -> int | None:
    raw = client.get(DESIRED_KEY.format(queue=queue))
    try:
        value = json.loads(raw)["desired"] if raw else None
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Local(Actuator):
    """The desired count in Redis for the supervisor; its last report says if it could."""

    name = "local"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def apply(self, decision: ScalingDecision) -> dict[str, Any]:
        assert decision.desired is not None
        report = read_local(self.client)
        if report is None:
            raise ActuatorError(
                "local: no `lewis up` supervisor reports on this broker "
                f"(nothing under {LOCAL_KEY} for {LOCAL_TTL:.0f}s)"
            )
        write_desired(self.client, decision.queue, decision.desired)
        pool = (report.get("queues") or {}).get(decision.queue) or {}
        outcome = {
            "applied": True,
            "supervisor_pid": report.get("pid"),
            "running": pool.get("running", []),
            "draining": pool.get("draining", []),
        }
        if pool.get("error"):  # the supervisor's last attempt failed (e.g. a start refused)
            raise ActuatorError(f"local: {pool['error']}")
        return outcome


# --- celery: remote control on running workers ----------------------------------------------


class CeleryControl(Actuator):
    """Consumers and pools of running workers, through Celery's remote control."""

    name = "celery"

    def __init__(self, app: Celery, client: redis.Redis, timeout: float = 2.0) -> None:
        self.app, self.client, self.timeout = app, client, timeout

    def apply(self, decision: ScalingDecision) -> dict[str, Any]:
        from .fleet import read_workers

        assert decision.desired is not None
        q = decision.queue
        workers = [w for w in read_workers(self.client) if w.state == "up"]
        consuming = sorted(w.name for w in workers if q in w.consuming)
        idle = sorted(w.name for w in workers if q not in w.consuming)
        outcome: dict[str, Any] = {"consuming": consuming, "added": [], "cancelled": [], "pool": {}}
        if decision.desired > len(consuming):
            for name in idle[: decision.desired - len(consuming)]:
                self._control("add_consumer", name, queue=q)
                outcome["added"].append(name)
        elif decision.desired < len(consuming):
            # the newest names last: cancel from the end, never below the decision
            for name in consuming[decision.desired :][::-1]:
                self._control("cancel_consumer", name, queue=q)
                outcome["cancelled"].append(name)
        outcome["pool"] = self._pools(decision, {w.name: w for w in workers})
        missing = decision.desired - len(consuming) - len(outcome["added"])
        if missing > 0:
            raise ActuatorError(
                f"celery: {missing} more {q} consumer(s) wanted, but no running "
                f"worker is left to add one to (outcome: {outcome})"
            )
        return outcome

    def _pools(self, decision: ScalingDecision, workers: dict[str, WorkerRecord]) -> dict[str, Any]:
        done: dict[str, Any] = {}
        for advice in decision.inputs.get("pool_advice") or []:
            worker = workers.get(advice["worker"])
            if worker is None or advice["advice"] not in (GROW, SHRINK):
                continue
            if advice["advice"] == SHRINK and worker.concurrency <= 1:
                continue
            command = "pool_grow" if advice["advice"] == GROW else "pool_shrink"
            done[worker.name] = self._control(command, worker.name, n=1, strict=False)
        return done

    def _control(self, command: str, worker: str, strict: bool = True, **arguments: Any) -> Any:
        from .broker import broadcast

        replies = broadcast(
            self.app,
            command,
            timeout=self.timeout,
            destination=[worker],
            limit=1,
            arguments=arguments,
        )
        reply = replies.get(worker)
        if strict and (reply is None or "error" in reply):
            raise ActuatorError(
                f"celery: {command} on {worker}: {reply.get('error') if reply else 'no answer'}"
            )
        return reply


# --- kubernetes: the Deployment's scale subresource ------------------------------------------


class Kubernetes(Actuator):
    """``replicas`` of the queue's Deployment, with the official client (read, then patch)."""

    name = "kubernetes"

    def __init__(self, settings: ScalingSettings) -> None:
        self.settings = settings
        self._api: Any = None

    def deployment(self, queue: str) -> str:
        name = getattr(self.settings, f"kubernetes_{queue}_deployment", "")
        if not name:
            raise ActuatorError(f"kubernetes: no deployment named for queue {queue}")
        return str(name)

    def api(self) -> Any:
        if self._api is None:
            try:
                from kubernetes import client, config
            except ImportError:
                raise ActuatorError(
                    "kubernetes: the client is not installed "
                    "(pip install 'lewis-tasks[kubernetes]')"
                ) from None
            configuration = client.Configuration()
            try:
                if self.settings.kubeconfig:
                    config.load_kube_config(
                        config_file=self.settings.kubeconfig, client_configuration=configuration
                    )
                else:
                    config.load_incluster_config(client_configuration=configuration)
            except Exception as exc:  # the loaders raise ConfigException, OSError, YAML errors
                raise ActuatorError(f"kubernetes: no configuration ({exc})") from None
            self._api = client.AppsV1Api(client.ApiClient(configuration))
        return self._api

    def apply(self, decision: ScalingDecision) -> dict[str, Any]:
        assert decision.desired is not None
        name, ns = self.deployment(decision.queue), self.settings.kubernetes_namespace
        # a (connect, read) pair: the client ignores a float timeout (it takes int or a tuple)
        timeout = (self.settings.kubernetes_timeout, self.settings.kubernetes_timeout)
        api = self.api()
        try:
            scale = api.read_namespaced_deployment_scale(name, ns, _request_timeout=timeout)
            before = int(scale.spec.replicas or 0)
            if before != decision.desired:
                api.patch_namespaced_deployment_scale(
                    name, ns, {"spec": {"replicas": decision.desired}}, _request_timeout=timeout
                )
        except Exception as exc:  # ApiException, urllib3's timeouts and refusals
            status = getattr(exc, "status", None)
            detail = (
                f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
                if status
                else f"{type(exc).__name__}: {str(exc)[:200]}"
            )
            raise ActuatorError(f"kubernetes: deployment {ns}/{name}: {detail}") from None
        return {
            "applied": before != decision.desired,
            "deployment": f"{ns}/{name}",
            "replicas_before": before,
            "replicas": decision.desired,
        }


def build_actuator(settings: ScalingSettings, app: Celery, client: redis.Redis) -> Actuator:
    """The configured actuator; ``auto``: local when a supervisor reports, else dryrun."""
    kind = settings.actuator
    if kind == "auto":
        kind = "local" if read_local(client) is not None else "dryrun"
    if kind == "local":
        return Local(client)
    if kind == "celery":
        return CeleryControl(app, client)
    if kind == "kubernetes":
        return Kubernetes(settings)
    return DryRun()


__all__ = [
    "Actuator",
    "DryRun",
    "Local",
    "CeleryControl",
    "Kubernetes",
    "build_actuator",
    "DESIRED_KEY",
    "LOCAL_KEY",
    "LOCAL_TTL",
    "read_local",
    "write_desired",
    "read_desired",
]
