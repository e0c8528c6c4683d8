"""Drive rlfleet on a LocalCluster the way a user does: helm install, kubectl apply / patch / wait.

Shared by the demo (`python -m e2e.demo`), the e2e tests and the fleet benchmark.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from e2e.cluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "rlfleet"
POOL_RESOURCE = "inferencepools.rlfleet.io"  # never the ambiguous plain `inferencepool`
OPERATOR_NAMESPACE = "rlfleet-system"


@dataclass
class Replica:
    pod: str
    ip: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


class Fleet:
    """One namespace's pools on a local cluster, managed through kubectl and helm."""

    def __init__(self, cluster: LocalCluster, namespace: str = "default") -> None:
        self.cluster = cluster
        self.namespace = namespace

    # -- install ------------------------------------------------------------------
    def install_operator(
        self, release: str = "rlfleet", resync_seconds: float = 2, timeout: str = "180s"
    ) -> float:
        """`helm install` the chart (CRD, RBAC, operator Deployment); wait until the operator is ready."""
        t0 = time.monotonic()
        self.cluster.helm(
            "upgrade", "--install", release, str(CHART),
            "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
            "--set", f"operator.resyncSeconds={resync_seconds}",
            "--wait", "--timeout", timeout,
        )  # fmt: skip
        return time.monotonic() - t0

    # -- pools ----------------------------------------------------------------------
    def pool_manifest(
        self,
        name: str,
        replicas: int,
        engine_args: dict | None = None,
        paused: bool = False,
        weights: dict | None = None,
        port: int = 8180,
        pause_timeout_s: float = 30,
        pause_mode: str | None = None,
    ) -> dict:
        spec: dict = {
            "replicas": replicas,
            "image": "rlfleet/rlfleet:0.1.0",
            "port": port,
            "paused": paused,
            "engineArgs": engine_args or {},
            "pause": {
                "timeoutSeconds": pause_timeout_s,
                **({"mode": pause_mode} if pause_mode else {}),
            },
        }
        if weights:
            spec["weights"] = weights
        return {
            "apiVersion": "rlfleet.io/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }

    def create_pool(self, name: str, replicas: int, **kw) -> None:
        self.cluster.apply(self.pool_manifest(name, replicas, **kw))

    def get(self, name: str) -> dict:
        out = self.cluster.kubectl(
            "get", POOL_RESOURCE, name, "-n", self.namespace, "-o", "json"
        ).stdout
        return json.loads(out)

    def patch(self, name: str, spec: dict) -> float:
        """`kubectl patch ... --type=merge`; returns the wall time at which the patch was accepted."""
        body = json.dumps({"spec": spec})
        self.cluster.kubectl(
            "patch", POOL_RESOURCE, name, "-n", self.namespace, "--type=merge", "-p", body
        )
        return time.monotonic()

    def condition(self, name: str, ctype: str) -> dict | None:
        for c in self.get(name).get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return c
        return None

    def wait_condition(
        self, name: str, ctype: str, status: str = "True", timeout: float = 120, poll: float = 0.05
    ) -> float:
        """Poll until condition `ctype` has `status` and is current (observedGeneration); return when."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            obj = self.get(name)
            gen = obj["metadata"].get("generation")
            for c in obj.get("status", {}).get("conditions", []):
                if c["type"] == ctype:
                    last = c
                    if c["status"] == status and c.get("observedGeneration", gen) >= gen:
                        return time.monotonic()
            time.sleep(poll)
        raise TimeoutError(
            f"{name}: condition {ctype}={status} not reached in {timeout}s; last: {last}; status: {json.dumps(self.get(name).get('status'), indent=1)}"
        )

    def kubectl_wait(self, name: str, condition: str, timeout: str = "120s") -> None:
        self.cluster.kubectl(
            "wait", f"--for=condition={condition}", f"{POOL_RESOURCE}/{name}", "-n", self.namespace, f"--timeout={timeout}",
            timeout=600,
        )  # fmt: skip

    def delete_pool(self, name: str, wait: bool = True) -> None:
        self.cluster.kubectl(
            "delete",
            POOL_RESOURCE,
            name,
            "-n",
            self.namespace,
            f"--wait={str(wait).lower()}",
            timeout=300,
        )

    # -- replicas -----------------------------------------------------------------
    def replicas(self, name: str) -> list[Replica]:
        """The pool's running pods with their loopback IPs (pod IPs: there is no kube-proxy here)."""
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", f"rlfleet.io/pool={name}", "-o", "json"
        ).stdout
        port = int(self.get(name)["spec"].get("port", 8180))
        reps = []
        for p in json.loads(out)["items"]:
            ip = p.get("status", {}).get("podIP")
            if (
                ip
                and p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
            ):
                reps.append(Replica(p["metadata"]["name"], ip, port))
        return sorted(reps, key=lambda r: r.pod)

    def wait_replicas_ready(self, name: str, n: int, timeout: float = 300) -> list[Replica]:
        self.wait_condition(name, "Ready", timeout=timeout, poll=0.5)
        reps = self.replicas(name)
        if len(reps) != n:
            raise AssertionError(f"{name}: {len(reps)} running replicas, expected {n}")
        return reps

    def control_token(self, name: str) -> str:
        secret = self.get(name)["spec"].get("controlTokenSecret") or f"{name}-control-token"
        out = self.cluster.kubectl(
            "get", "secret", secret, "-n", self.namespace, "-o", "json"
        ).stdout
        return base64.b64decode(json.loads(out)["data"]["token"]).decode()

    def events(self, name: str) -> list[dict]:
        out = self.cluster.kubectl(
            "get",
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        ).stdout
        return json.loads(out)["items"]

    def operator_log(self) -> str:
        out = self.cluster.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
        logs = [
            self.cluster.pod_log(OPERATOR_NAMESPACE, p["metadata"]["name"])
            for p in json.loads(out)["items"]
        ]
        return "\n".join(logs)

    def try_kubectl(self, *args: str) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, check=False)

    @staticmethod
    def dump(obj: dict) -> str:
        return yaml.safe_dump(obj, sort_keys=False)
