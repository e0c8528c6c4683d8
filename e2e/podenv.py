"""A container's environment and command line, resolved as the kubelet does.

- `envFrom` (configMapRef / secretRef, with `prefix` and `optional`) first,
  then `env` in order; later entries override earlier ones.
- `env[].value` may reference earlier variables as `$(NAME)`.
- `valueFrom`: `fieldRef` (metadata.name/namespace/uid, metadata.labels['k'],
  metadata.annotations['k'], spec.nodeName, spec.serviceAccountName,
  status.podIP, status.podIPs, status.hostIP), `secretKeyRef` /
  `configMapKeyRef` (with `optional`), `resourceFieldRef` (limits/requests
  cpu/memory; node capacity when unset).
- `$(NAME)` in command and args expands to the container's variables;
  `$$` is a literal `$`; unknown references stay as written.

A missing Secret/ConfigMap/key that is not optional raises EnvError (the
kubelet's CreateContainerConfigError; it retries).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal

ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# Fetch a namespaced object ("secrets" | "configmaps", name) -> object or None if absent.
Fetch = Callable[[str, str], dict | None]


class EnvError(Exception):
    """The container cannot be configured (yet)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion (the kubelet's algorithm)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":  # escaped operator
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:  # incomplete reference: keep "$(" literally
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def _decode(obj: dict, key: str) -> str | None:
    if obj.get("kind") == "Secret" or "type" in obj:
        raw = obj.get("data", {}).get(key)
        if raw is not None:
            return base64.b64decode(raw).decode()
        return obj.get("stringData", {}).get(key)
    data = obj.get("data", {})
    if key in data:
        return data[key]
    raw = obj.get("binaryData", {}).get(key)
    return base64.b64decode(raw).decode() if raw is not None else None


def _keys(obj: dict) -> dict[str, str]:
    keys = list(obj.get("data", {})) + list(obj.get("binaryData", {}))
    return {k: v for k in keys if (v := _decode(obj, k)) is not None}


_FIELD_INDEX = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: dict, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return simple[path]
    m = _FIELD_INDEX.match(path)
    if m:
        return meta.get(m.group(1), {}).get(m.group(2), "")
    raise EnvError(f"unsupported fieldRef {path!r}")


_SUFFIX = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def quantity(text: str) -> Decimal:
    """Parse a Kubernetes quantity ("500m", "2Gi", "1e3")."""
    m = re.fullmatch(r"([0-9.eE+-]+?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(text).strip())
    if not m:
        raise EnvError(f"bad quantity {text!r}")
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""])


def resource_value(container: dict, ref: dict, capacity: Mapping[str, str]) -> str:
    kind, _, res = ref["resource"].partition(".")
    resources = container.get("resources", {})
    raw = resources.get(kind, {}).get(res)
    if raw is None and kind == "requests":
        raw = resources.get("limits", {}).get(res)
    if raw is None:
        raw = capacity.get(res, "0")
    divisor = quantity(ref.get("divisor", "1"))
    return str(math.ceil(quantity(raw) / divisor))


def resolve_env(
    pod: dict,
    container: dict,
    fetch: Fetch,
    pod_ip: str,
    host_ip: str,
    capacity: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's variables, in the kubelet's order and semantics."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}

    def get(kind: str, name: str, optional: bool) -> dict | None:
        obj = fetch(kind, name)
        if obj is None and not optional:
            raise EnvError(f"{kind[:-1]} {ns}/{name} not found")
        return obj

    for src in container.get("envFrom", []):
        for field, kind in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            if field not in src:
                continue
            ref = src[field]
            obj = get(kind, ref["name"], bool(ref.get("optional")))
            if obj is None:
                continue
            for key, value in _keys(obj).items():
                name = src.get("prefix", "") + key
                if ENV_NAME.match(name):
                    env[name] = value

    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"], capacity or {})
        else:
            field, kind = (
                ("secretKeyRef", "secrets")
                if "secretKeyRef" in vf
                else ("configMapKeyRef", "configmaps")
            )
            ref = vf[field]
            optional = bool(ref.get("optional"))
            obj = get(kind, ref["name"], optional)
            if obj is None:
                continue
            value = _decode(obj, ref["key"])
            if value is None:
                if optional:
                    continue
                raise EnvError(f"key {ref['key']!r} not found in {kind[:-1]} {ns}/{ref['name']}")
            env[name] = value
    return env


def command_line(container: dict, env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; empty if neither is set."""
    return [expand(a, env) for a in container.get("command", []) + container.get("args", [])]
