"""A loopback stand-in for the Kubernetes API server: the Deployment scale subresource only.

``GET`` and ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` answer as the
API server does (an ``autoscaling/v1`` Scale); every request is recorded (method, path,
content type, authorization, body) so a test asserts what the real client sent. ``refuse``
makes it answer 403 the way RBAC does; ``delay`` makes it hang before answering.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "test-token"


@dataclass
class FakeKube:
    replicas: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    refuse: bool = False
    delay: float = 0.0

    def app(self) -> web.Application:
        app = web.Application()
        path = "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"
        app.router.add_get(path, self.handle)
        app.router.add_patch(path, self.handle)
        return app

    def scale(self, ns: str, name: str) -> dict[str, Any]:
        n = self.replicas[(ns, name)]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"replicas": n},
            "status": {"replicas": n, "selector": f"app={name}"},
        }

    async def handle(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "content_type": request.headers.get("Content-Type"),
                "authorization": request.headers.get("Authorization"),
                "body": json.loads(body) if body else None,
            }
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.status(401, "Unauthorized")
        if self.refuse:
            return self.status(
                403,
                f'deployments.apps "{name}" is forbidden: cannot patch '
                'resource "deployments/scale"',
                "Forbidden",
            )
        if (ns, name) not in self.replicas:
            return self.status(404, f'deployments.apps "{name}" not found', "NotFound")
        if request.method == "PATCH":
            self.replicas[(ns, name)] = int(json.loads(body)["spec"]["replicas"])
        return web.json_response(self.scale(ns, name))

    @staticmethod
    def status(code: int, message: str, reason: str = "") -> web.Response:
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": message,
                "reason": reason or message,
                "code": code,
            },
            status=code,
        )


def kubeconfig(port: int) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: loopback
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: lewis-scaler
  user:
    token: {TOKEN}
contexts:
- name: test
  context: {{cluster: loopback, user: lewis-scaler, namespace: lewis}}
current-context: test
"""
