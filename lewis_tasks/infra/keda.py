"""KEDA ScaledObjects for teams that let KEDA act instead of LEWIS (``lewis scale export --keda``).

One ScaledObject per scaled queue, on KEDA's Redis list trigger, with the same bounds,
target, activation threshold, polling interval and scale-down window as ``scaling.*``. The
list names are the broker's real ones: kombu keeps priority > 0 messages in sub-lists
``<queue>\\x06\\x16<priority>`` (infra/broker.py), so each queue gets one trigger per list.

Two differences from LEWIS' own decision, said in the output too: the HPA takes the *highest*
of the per-list recommendations where LEWIS sums the lists, and KEDA sees only ready
messages — the ``unacked`` hash (running and prefetched tasks) is no list it can read.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import yaml

from .broker import PRIORITY_SEP, PRIORITY_STEPS
from .config import SCALED_QUEUES, Settings

AUTH_NAME = "lewis-keda-redis"  # a TriggerAuthentication the operator creates (password)


def list_names(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s ready messages, priority sub-lists included."""
    return [queue if pri == 0 else f"{queue}{PRIORITY_SEP}{pri}" for pri in PRIORITY_STEPS]


def redis_target(broker_url: str) -> dict[str, str]:
    """address/databaseIndex/enableTLS of the broker, never its password."""
    parsed = urllib.parse.urlsplit(broker_url or "redis://redis:6379/0")
    host = parsed.hostname or "redis"
    db = (parsed.path or "/0").strip("/") or "0"
    out = {"address": f"{host}:{parsed.port or 6379}", "databaseIndex": db}
    if parsed.scheme == "rediss":
        out["enableTLS"] = "true"
    return out


def scaled_objects(settings: Settings) -> list[dict[str, Any]]:
    s = settings.scaling
    target = redis_target(settings.broker.url)
    out = []
    for q in SCALED_QUEUES:
        deployment = getattr(s, f"kubernetes_{q}_deployment")
        triggers = [
            {
                "type": "redis",
                "authenticationRef": {"name": AUTH_NAME},
                "metadata": {
                    **target,
                    "listName": name,
                    "listLength": f"{getattr(s, f'{q}_target_per_worker'):g}",
                    "activationListLength": str(s.activation_threshold),
                },
            }
            for name in list_names(q)
        ]
        out.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": deployment, "namespace": s.kubernetes_namespace},
                "spec": {
                    "scaleTargetRef": {"name": deployment},
                    "pollingInterval": int(s.interval),
                    "cooldownPeriod": int(s.stabilization_window),
                    "minReplicaCount": getattr(s, f"{q}_min_workers"),
                    "maxReplicaCount": getattr(s, f"{q}_max_workers"),
                    "advanced": {
                        "horizontalPodAutoscalerConfig": {
                            "behavior": {
                                "scaleDown": {
                                    "stabilizationWindowSeconds": int(s.stabilization_window)
                                },
                                "scaleUp": {
                                    "stabilizationWindowSeconds": 0,
                                    "selectPolicy": "Max",
                                    "policies": [
                                        {
                                            "type": "Percent",
                                            "value": 100,
                                            "periodSeconds": int(s.interval),
                                        },
                                        {
                                            "type": "Pods",
                                            "value": 4,
                                            "periodSeconds": int(s.interval),
                                        },
                                    ],
                                },
                            }
                        }
                    },
                    "triggers": triggers,
                },
            }
        )
    return out


def keda_yaml(settings: Settings) -> str:
    header = (
        "# KEDA ScaledObjects for LEWIS tasks (`lewis scale export --keda`), from scaling.*.\n"
        "# Create the TriggerAuthentication 'lewis-keda-redis' with the broker password\n"
        "# (parameter: password) and set LEWIS_SCALING_ACTUATOR=dryrun so LEWIS only records.\n"
        "# One trigger per Redis list: kombu keeps priority messages in sub-lists\n"
        "# '<queue>\\x06\\x16<priority>'. The HPA takes the highest per-list recommendation\n"
        "# (LEWIS sums them), and KEDA cannot see unacked (running) tasks.\n"
    )
    return header + yaml.safe_dump_all(scaled_objects(settings), sort_keys=False)


__all__ = ["list_names", "redis_target", "scaled_objects", "keda_yaml", "AUTH_NAME"]
