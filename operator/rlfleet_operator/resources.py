"""Child manifests of a pool: StatefulSet, Services, the state ConfigMap, the token Secret.

Everything a replica must know at start (paused?, which weights) comes from the
`<pool>-state` ConfigMap through env, so changing it never changes the pod
template: no rolling restart, yet a pod created or restarted while the pool is
paused starts paused with the pool's weights.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from . import names
from .spec import PoolSpec, Weights, engine_args_to_argv

Manifest = dict[str, Any]


def owner_reference(pool_body: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference to the pool: deleting the pool deletes the child."""
    meta = pool_body["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(name: str, spec: PoolSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": names.common_labels(spec.name),
        "ownerReferences": [owner_reference(owner)],
    }


def engine_argv(spec: PoolSpec) -> list[str]:
    """The engine's arguments (after `python -m engine_pod`)."""
    argv = ["--host", "$(POD_IP)", "--port", str(spec.port)]
    if spec.model:
        argv += ["--model", spec.model]
    return argv + engine_args_to_argv(spec.engine_args)


def engine_env(spec: PoolSpec) -> list[dict[str, Any]]:
    """Container env: pod IP, control token (Secret), start state and weights (state ConfigMap)."""
    state = names.state_configmap_name(spec.name)

    def from_state(key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": state, "key": key}
        if optional:
            ref["optional"] = True
        return {"configMapKeyRef": ref}

    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "RLFLEET_CONTROL_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": spec.token_secret_name, "key": names.TOKEN_KEY}},
        },
        {"name": "RLFLEET_START_PAUSED", "valueFrom": from_state(names.STATE_PAUSED)},
        {"name": "RLFLEET_WEIGHTS_PATH", "valueFrom": from_state(names.STATE_WEIGHTS_PATH)},
        {"name": "RLFLEET_WEIGHTS_VERSION", "valueFrom": from_state(names.STATE_WEIGHTS_VERSION)},
        # Optional: a state ConfigMap written by an older operator has no digest key yet.
        {
            "name": "RLFLEET_WEIGHTS_DIGEST",
            "valueFrom": from_state(names.STATE_WEIGHTS_DIGEST, optional=True),
        },
    ]
    reserved = {e["name"] for e in env}
    env += [
        {"name": e["name"], "value": str(e.get("value", ""))}
        for e in spec.env
        if e.get("name") not in reserved
    ]
    return env


def engine_container(spec: PoolSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": names.CONTAINER,
        "image": spec.image,
        "command": ["python", "-m", "engine_pod"],
        "args": engine_argv(spec),
        "env": engine_env(spec),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        # Model loading may take minutes: liveness starts counting after the first /health.
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 120,
        },
    }
    if spec.resources:
        container["resources"] = {k: dict(v) for k, v in spec.resources.items() if v}
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def statefulset(spec: PoolSpec, owner: Mapping[str, Any]) -> Manifest:
    pod_spec: dict[str, Any] = {
        "containers": [engine_container(spec)],
        "terminationGracePeriodSeconds": 30,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(names.statefulset_name(spec.name), spec, owner),
        "spec": {
            "replicas": spec.replicas,
            "serviceName": names.headless_service_name(spec.name),
            # Parallel: replicas start together; a pause never waits on pod ordering.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": names.selector_labels(spec.name)},
            "template": {
                # serving "true": a new or restarted pod serves (it starts with the pool's weights)
                "metadata": {
                    "labels": {**names.common_labels(spec.name), names.LABEL_SERVING: "true"}
                },
                "spec": pod_spec,
            },
        },
    }


def _service(spec: PoolSpec, owner: Mapping[str, Any], name: str, headless: bool) -> Manifest:
    # The client Service leaves fenced replicas out; the headless one names every pod.
    selector = names.selector_labels(spec.name) if headless else names.serving_selector(spec.name)
    svc_spec: dict[str, Any] = {
        "selector": selector,
        "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
    }
    if headless:
        svc_spec["clusterIP"] = "None"
        svc_spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, spec, owner),
        "spec": svc_spec,
    }


def client_service(spec: PoolSpec, owner: Mapping[str, Any]) -> Manifest:
    """The Service clients send completions to (ready, not fenced replicas only)."""
    return _service(spec, owner, names.service_name(spec.name), headless=False)


def headless_service(spec: PoolSpec, owner: Mapping[str, Any]) -> Manifest:
    """The StatefulSet's governing Service: stable per-pod DNS names."""
    return _service(spec, owner, names.headless_service_name(spec.name), headless=True)


def state_data(paused: bool, weights: Weights | None) -> dict[str, str]:
    """The state ConfigMap's data. Every key is always present (configMapKeyRef needs it)."""
    return {
        names.STATE_PAUSED: "true" if paused else "false",
        names.STATE_WEIGHTS_PATH: weights.path if weights else "",
        names.STATE_WEIGHTS_VERSION: weights.version if weights else "",
        names.STATE_WEIGHTS_DIGEST: (weights.digest or "") if weights else "",
    }


def state_configmap(
    spec: PoolSpec, owner: Mapping[str, Any], data: Mapping[str, str] | None = None
) -> Manifest:
    """`<pool>-state`: what a replica starting now must look like (paused, weights)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(names.state_configmap_name(spec.name), spec, owner),
        "data": dict(data) if data is not None else state_data(spec.paused, spec.weights),
    }


def token_secret(spec: PoolSpec, owner: Mapping[str, Any], token: str | None = None) -> Manifest:
    """The control-token Secret the operator creates when the pool names none."""
    token = token or secrets.token_urlsafe(32)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(spec.token_secret_name, spec, owner),
        "data": {names.TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def applied_children(spec: PoolSpec, owner: Mapping[str, Any]) -> list[Manifest]:
    """Children applied (server-side) on every reconcile; the ConfigMap and Secret are create-only."""
    return [headless_service(spec, owner), client_service(spec, owner), statefulset(spec, owner)]
